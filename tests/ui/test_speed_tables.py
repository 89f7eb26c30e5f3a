"""Speed in the comparison table and the latency plot: intervals shown, withheld percentiles blank, contention
flagged."""
import matplotlib

matplotlib.use("Agg")

from edgekit.measure.store import Result, results_frame  # noqa: E402
from edgekit.ui.plots import plot_latency_percentiles  # noqa: E402
from edgekit.workflows.compare import summary_frame  # noqa: E402


def _result(variant, contended, p99):
    metrics = {"perplexity": 40.0, "decode_tokens_per_s": 100.0, "decode_tokens_per_s_ci95": [90.0, 110.0],
               "speed_ratio": 1.2, "speed_ratio_ci95": [1.1, 1.3], "latency_ms_p50": 10.0, "latency_ms_p95": 12.0,
               "latency_ms_p99": p99, "latency_indicative": [] if p99 else ["p99"], "contended": contended,
               "bound": "overhead-bound"}
    return Result(model="default", variant=variant, metrics=metrics, model_revision="hand-made")


RESULTS = [_result("fp32", False, 15.0), _result("int4-g32", True, None)]


def test_table_shows_intervals_blank_withheld_and_flags_contention():
    frame = summary_frame(RESULTS).set_index("variant")
    assert (frame.loc["fp32", "tok/s 95% CI"] == "[90.0, 110]"
            and frame.loc["fp32", "× base [95% CI]"] == "1.20 [1.10, 1.30]")
    assert frame.loc["int4-g32", "p99 ms"] == "-" and frame.loc["int4-g32", "withheld"] == "p99"
    assert frame.loc["int4-g32", "contended"] == "CONTENDED" and frame.loc["fp32", "contended"] == "-"


def test_latency_plot_skips_withheld_bars_and_labels_contended_variants():
    for frame in (results_frame(RESULTS), summary_frame(RESULTS)):
        ax = plot_latency_percentiles(frame)
        labels = [t.get_text() for t in ax.get_xticklabels()]
        assert labels == ["fp32", "int4-g32 (contended)"]
        heights = [p.get_height() for p in ax.patches]
        assert len(heights) == 6 and sum(h == h for h in heights) == 5   # the withheld P99 is no bar (NaN)
