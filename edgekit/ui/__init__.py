"""Floor 7: widgets, plots, report and narration: the only room that imports ipywidgets or matplotlib.

Notebooks import what they show from here (``from edgekit.ui import Dashboard, plot_quality_vs_size``) and
everything else from :mod:`edgekit`; whatever a widget can do, a function of the library can do.
"""
from edgekit.ui.lessons import closing
from edgekit.ui.lessons.task_flips import figures_from as task_flip_figures
from edgekit.ui.narrate import (
                              MissingFigureError,
                              choose,
                              fields,
                              gib,
                              listing,
                              loss_bound,
                              mb,
                              on_front,
                              pareto_front,
                              plural,
                              ranking,
                              reads,
                              render,
                              side,
                              sig,
                              speed_reading,
                              text,
                              trend,
)
from edgekit.ui.plots import (
                              comparison_figure,
                              figure_png,
                              normalize,
                              plot_activation_outliers,
                              plot_error_histograms,
                              plot_flips_vs_kl,
                              plot_latency_percentiles,
                              plot_layer_errors,
                              plot_load_sweep,
                              plot_memory_vs_device,
                              plot_quality_vs_size,
                              plot_quant_grid,
                              plot_sensitivity_heatmap,
                              plot_throughput_vs_p99,
                              plot_weight_histogram,
)
from edgekit.ui.record import run_record
from edgekit.ui.report import by_model, comparison_frame, device_memory_frame, run_label, write_report
from edgekit.ui.tables import readable
from edgekit.ui.widgets import (
                              Dashboard,
                              MemoryPlanner,
                              QuantKnobs,
                              error_html,
                              errors_shown_in,
                              model_loader,
                              model_source_picker,
                              side_by_side_html,
                              variant_picker,
)

__all__ = [
    "closing", "readable", "run_record", "MissingFigureError", "choose", "fields", "gib", "listing", "loss_bound",
    "mb",
    "on_front", "plural", "ranking", "reads", "render", "side", "sig", "speed_reading", "text", "trend",
    "comparison_figure", "figure_png", "normalize", "pareto_front", "plot_activation_outliers",
    "plot_flips_vs_kl", "task_flip_figures",
    "plot_error_histograms", "plot_latency_percentiles", "plot_layer_errors", "plot_load_sweep",
    "plot_memory_vs_device", "plot_quality_vs_size", "plot_quant_grid", "plot_sensitivity_heatmap",
    "plot_throughput_vs_p99", "plot_weight_histogram", "by_model", "comparison_frame", "device_memory_frame",
    "run_label", "write_report", "Dashboard", "MemoryPlanner", "QuantKnobs", "error_html", "errors_shown_in",
    "model_loader", "model_source_picker", "side_by_side_html", "variant_picker",
]
