"""ipywidgets for the notebooks: UI only. Every widget calls a library function that a plain
call can use too; an :class:`~edgekit.core.errors.EdgekitError` is shown in place, not as a traceback."""
from __future__ import annotations

import html
from contextlib import contextmanager

import ipywidgets as w
import matplotlib.pyplot as plt
from IPython.display import HTML, Image, display

from edgekit.core.errors import EdgekitError, InputError
from edgekit.core.paths import work_dir
from edgekit.measure.quality import EvalSettings
from edgekit.measure.store import ResultStore
from edgekit.memory.plan import plan_memory
from edgekit.memory.profiles import device_profiles
from edgekit.models.config import known_models
from edgekit.models.names import model_names
from edgekit.quantizers.reference import Scheme, fake_quantize, group_grid, quantization_error
from edgekit.ui.plots import comparison_figure, figure_png, plot_memory_vs_device, plot_quant_grid
from edgekit.ui.report import comparison_frame, device_memory_frame, run_label, write_report
from edgekit.variants.registry import Variant, offered_variants
from edgekit.workflows.compare import DEFAULT_VARIANTS, LatencySettings, compare
from edgekit.workflows.side_by_side import SideBySide, side_by_side
from edgekit.workflows.sweep import run_sweep
from edgekit.workflows.tasks import TaskRun, shipped_tasks


def error_html(exc: Exception) -> str:
    return f'<div style="color:#b00020"><b>{type(exc).__name__}:</b> {html.escape(str(exc))}</div>'


@contextmanager
def errors_shown_in(output: w.Output):
    """Run a widget callback; an EdgekitError appears in ``output`` as one red line."""
    try:
        yield
    except EdgekitError as exc:
        output.append_display_data(HTML(error_html(exc)))  # works with or without a frontend


def model_loader(load, value: str = "default") -> w.VBox:
    """A model source picker and a Load button; ``load(source)`` returns what to display."""
    picker = model_source_picker(value)
    button = w.Button(description="Load", button_style="primary")
    output = w.Output()

    def on_click(_):
        output.clear_output()
        with errors_shown_in(output), output:

            display(load(picker.value))

    button.on_click(on_click)
    return w.VBox([w.HBox([picker, button]), output])


def model_source_picker(value: str = "default") -> w.Combobox:
    """Pick the model: a named model (edgekit.models.names), a local folder or a hub id (free text)."""
    return w.Combobox(value=value, options=model_names(), placeholder="default, smollm2-135m, ./path or org/name",
                      description="model", ensure_option=False, layout=w.Layout(width="420px"))


def variant_picker(value=None, rows: int = 12) -> w.SelectMultiple:
    """Pick the variants to compare among every registered one (ctrl/shift-click for several)."""

    value = tuple(value or DEFAULT_VARIANTS)
    names = offered_variants()
    return w.SelectMultiple(options=names + [v for v in value if v not in names], value=value, rows=rows,
                            description="variants")


# ---------------------------------------------------------------- comparison dashboard
class Dashboard:
    """The comparison dashboard: pick the model, variants (PyTorch and ONNX alike), eval text,
    context and stride, press run; per-variant progress, the table filling in as results
    arrive, the plots of :mod:`edgekit.ui.plots`, earlier runs from the store laid beside, and a
    report button. ``Dashboard(...).run()`` does the same without a click (headless use).

    In **sweep** mode it measures several models (named models or folders) x the variants through
    :func:`edgekit.workflows.sweep.run_sweep` on a local Ray cluster of ``sweep_cpus`` CPUs (or the Ray this
    process already joined): the table (a ``model`` column first) and one figure per model fill in
    as cells land, and the report gets a section per model. Tasks picked in **tasks** (lm-eval, the first
    ``task limit`` items; 0: all) are answered by every variant in either mode and paired against the
    baseline: each task's accuracy, Δ [interval], flips and McNemar p join the table. **Side by side**
    continues a prompt with fp32 and with a chosen variant (:func:`edgekit.workflows.side_by_side.side_by_side`),
    the first differing token marked.
    """

    def __init__(self, model: str = "default", variants=("fp32", "int8", "nf4", "int4-g128"),
                 eval_text: str = "eval", context: int = 256, stride: int = 128, max_tokens: int = 2048,
                 latency_runs: int = 3, new_tokens: int = 16, device: str = "laptop-16gb",
                 plan_model: str = "compared model", store=None, resume: bool = False, mode: str = "compare",
                 models=("default",), sweep_cpus: int = 2, prompt: str = "HAMLET:\nTo be, or not to be,",
                 generate_variant: str | None = None, tasks=(), task_limit: int = 50) -> None:

        self.store = store or ResultStore()
        self.results: list = []
        self.report_path = None
        self.sweep_cpus = sweep_cpus
        self._figures: dict = {}  # model -> PNG of its figure, redrawn when one of its cells lands
        names = offered_variants()
        self.mode = w.ToggleButtons(options=[("compare one model", "compare"), ("sweep models (Ray)", "sweep")],
                                    value=mode, description="mode")
        self.model = model_source_picker(model)
        self.models = w.SelectMultiple(options=model_names(), rows=3, description="models")
        self.typed_models = w.Text(description="+ typed", placeholder="./folder org/name (space-separated)",
                                   layout=w.Layout(width="320px"))
        self.variants = w.SelectMultiple(options=names, rows=10, description="variants")
        self.typed = w.Text(description="+ typed", placeholder="int3-g64 nf4:double_quant=true (space-separated)",
                            layout=w.Layout(width="320px"))
        self.eval_text = w.Combobox(value=eval_text, options=["eval", "eval_milton"], ensure_option=False,
                                    description="eval text", placeholder="split, text file or text")
        self.context = w.BoundedIntText(context, min=2, max=1 << 20, description="context")
        self.stride = w.BoundedIntText(stride, min=1, max=1 << 20, description="stride")
        self.max_tokens = w.BoundedIntText(max_tokens, min=0, max=1 << 30, description="max tokens")
        self.latency_runs = w.BoundedIntText(latency_runs, min=0, max=1000, description="latency runs")
        self.new_tokens = w.BoundedIntText(new_tokens, min=1, max=4096, description="new tokens")
        self.device = w.Dropdown(options=device_profiles(), value=device, description="device")
        self.plan_model = w.Dropdown(options=["compared model"] + known_models(), value=plan_model,
                                     description="plan for")
        self.earlier = w.SelectMultiple(options=[], rows=4, description="earlier runs",
                                        layout=w.Layout(width="420px"))
        self.tasks = w.SelectMultiple(options=shipped_tasks(), value=tuple(tasks), rows=2, description="tasks")
        self.task_limit = w.BoundedIntText(task_limit, min=0, max=1 << 20, description="task limit")
        self.resume = w.Checkbox(value=resume, description="skip variants already measured", indent=False)
        self.run_button = w.Button(description="Run comparison", button_style="primary", icon="play")
        self.generate_model = model_source_picker(model)
        self.generate_variant = w.Combobox(value=generate_variant or list(variants)[-1], options=names,
                                           ensure_option=False, description="variant")
        self.generate_tokens = w.BoundedIntText(24, min=1, max=1024, description="tokens")
        self.prompt = w.Textarea(value=prompt, description="prompt", layout=w.Layout(width="640px", height="60px"))
        self.generate_button = w.Button(description="Continue with both", icon="columns")
        self.generation = w.Output()
        self.generate_button.on_click(lambda _: self.generate())
        self.report_button = w.Button(description="Write report", icon="file")
        self.progress = w.IntProgress(value=0, min=0, max=1, description="variants")
        self.status = w.HTML()
        self.log, self.table, self.plots, self.messages = w.Output(), w.Output(), w.Output(), w.Output()
        self.run_button.on_click(lambda _: self.run())
        self.report_button.on_click(lambda _: self.write_report())
        for control in (self.earlier, self.device, self.plan_model):
            control.observe(lambda _: self.refresh(), names="value")
        self.sweep_models = w.VBox([self.models, self.typed_models])
        self.mode.observe(lambda _: self._show_mode(), names="value")
        self._show_mode()
        self.pick(models, variants)
        self.refresh_runs()
        settings = w.VBox([self.context, self.stride, self.max_tokens, self.latency_runs, self.new_tokens,
                           self.tasks, self.task_limit])
        for control in settings.children:
            control.style.description_width = "90px"
        compare_to = w.VBox([self.device, self.plan_model, self.earlier])
        generate = w.VBox([w.HTML("<b>Side by side</b>: the same prompt continued greedily by fp32 and by a variant; "
                                  "the first token where they part is marked"),
                           w.HBox([self.generate_model, self.generate_variant, self.generate_tokens,
                                   self.generate_button]), self.prompt, self.generation])
        self.widget = w.VBox([
            self.mode,
            w.HBox([w.VBox([self.model, self.sweep_models, self.eval_text, self.variants, self.typed]), settings,
                    compare_to]),
            w.HBox([self.run_button, self.report_button, self.progress, self.resume]), self.status, self.messages,
            self.table, self.plots, self.log, generate], layout=w.Layout(border="1px solid #ddd", padding="6px"))
        self.widget.add_class("edgekit-dashboard")

    def _ipython_display_(self) -> None:

        display(self.widget)

    def pick(self, models=None, variants=None) -> None:
        """Set the sweep's models (named ones picked, folders and hub ids typed) and the variants (offered ones
        picked, any other registry string added to the picker), as a click would."""
        if models is not None:
            self.models.value = tuple(m for m in models if m in self.models.options)
            self.typed_models.value = " ".join(m for m in models if m not in self.models.options)
        if variants is not None:
            extra = [v for v in variants if v not in self.variants.options]
            self.variants.options = [*self.variants.options, *extra]
            self.variants.value = tuple(variants)

    def _show_mode(self) -> None:
        sweep = self.mode.value == "sweep"
        self.model.layout.display = "none" if sweep else None
        self.sweep_models.layout.display = None if sweep else "none"
        self.run_button.description = "Run sweep" if sweep else "Run comparison"

    def refresh_runs(self) -> None:
        """Offer the store's earlier comparison runs to lay beside the current one."""

        runs = self.store.runs()
        runs = runs[runs["kind"] == "compare"] if not runs.empty else runs
        current = self.results[0].run_id if self.results else None
        options = []
        for run_id in runs["run_id"] if not runs.empty else []:
            if run_id != current:
                options.append((f"{run_label(self.store.results(run_id=run_id))}", run_id))
        self.earlier.options = options[::-1]

    def _earlier_results(self) -> dict:

        runs = {}
        for run_id in self.earlier.value:
            results = self.store.results(run_id=run_id)
            runs[run_label(results)] = results
        return runs

    def run(self) -> list:
        """Run the comparison (or the sweep) with the current settings; the table and plots fill in as it goes."""

        self.results, self._figures = [], {}
        self.messages.outputs = ()  # (clear_output needs a frontend to take effect)
        self.table.outputs = ()
        self.run_button.disabled = True
        finished = False
        try:
            # progress bars land in the log, an EdgekitError in messages as one red line
            with self.log, errors_shown_in(self.messages):
                settings = EvalSettings(context=self.context.value, stride=self.stride.value,
                                        max_tokens=self.max_tokens.value or None)
                latency = (LatencySettings(new_tokens=self.new_tokens.value, runs=self.latency_runs.value)
                           if self.latency_runs.value else None)
                variants = self.chosen_variants()
                tasks = TaskRun(self.tasks.value, self.task_limit.value or None) if self.tasks.value else None
                per_model = len(set(variants) | {"fp32"})
                self.progress.value = 0
                if self.mode.value == "sweep":
                    models = self.chosen_models()
                    self.progress.max, self.progress.description = len(models) * per_model, "cells"
                    self.status.value = (f"measuring {self.progress.max} cells ({len(models)} models x {per_model} "
                                         f"variants) as Ray tasks…")
                    landed = run_sweep(models, variants, [self.eval_text.value], settings, latency, store=self.store,
                                       num_cpus=self.sweep_cpus, resume=self.resume.value, on_result=self._on_result,
                                       tasks=tasks)
                    self.results = landed  # cell order (models as picked), not the order the cells landed in
                    self.refresh(stale=())
                else:
                    self.progress.max, self.progress.description = per_model, "variants"
                    self.status.value = f"measuring {per_model} variants of {html.escape(self.model.value)}…"
                    compare(self.model.value, variants, self.eval_text.value, settings, latency,
                            store=self.store, on_result=self._on_result, resume=self.resume.value, tasks=tasks)
                finished = True
        finally:
            self.run_button.disabled = False
        if finished:
            self.log.clear_output()
            self.status.value = self._status_html(done=True)
            self.refresh_runs()
        return self.results

    def chosen_variants(self) -> list[str]:
        """The picked variants, then any typed in the text box (any registry string, options included:
        ``int3-g64 nf4:double_quant=true``); a bad one raises the registry's error, naming the valid ones."""
        typed = [t for t in self.typed.value.replace(";", " ").split() if t]
        for name in typed:
            Variant.parse(name)
        return list(dict.fromkeys([*self.variants.value, *typed]))

    def chosen_models(self) -> list[str]:
        """The sweep's models: the picked named models, then any folder or hub id typed beside them."""
        models = list(dict.fromkeys([*self.models.value, *self.typed_models.value.split()]))
        if not models:
            raise InputError("a sweep needs at least one model: pick a named model or type a folder or hub id")
        return models

    def _on_result(self, result) -> None:
        self.results.append(result)
        self.progress.value = len(self.results)
        self.status.value = self._status_html(done=False)
        self.log.clear_output(wait=True)
        self.refresh(stale=[result.model])

    def _status_html(self, done: bool) -> str:
        several = len({r.model for r in self.results}) > 1
        marks = " ".join(f'<span style="color:{"#b00020" if r.status != "ok" else "#137333"}">'
                         f'{"✗" if r.status != "ok" else "✓"} '
                         f'{html.escape(f"{r.model} {r.variant}" if several else r.variant)}</span>'
                         for r in self.results)
        head = "done" if done else f"measured {len(self.results)}/{self.progress.max}"
        return f"<b>{head}</b>: {marks}"

    def frame(self):
        """The table shown: this run's summary, with the chosen earlier runs' rows after it (in a sweep,
        model by model under a first ``model`` column)."""

        return comparison_frame(self.results, self._earlier_results())

    def models_measured(self) -> list[str]:
        """The models of this run's results, in the order their cells landed."""
        return list(dict.fromkeys(r.model for r in self.results))

    def memory_frame(self, model: str | None = None):
        """The memory plan of ``model``'s variants (default: the first model's) on the chosen device."""

        if not self.results:
            return None
        model = model or self.results[0].model
        results = [r for r in self.results if r.model == model]
        planned = model if self.plan_model.value == "compared model" else self.plan_model.value
        context = self.context.value if self.plan_model.value == "compared model" else 4096
        return device_memory_frame(planned, [r.variant for r in results], self.device.value, context,
                                   measured=results if planned == model else None)

    def figure(self, model: str | None = None):
        """The figure of ``model``'s results (default: the first model's), its earlier runs beside them."""

        model = model or (self.results[0].model if self.results else None)
        results = [r for r in self.results if r.model == model]
        earlier = self._earlier_results()
        if len(self.models_measured()) > 1:  # a sweep: each model's figure takes that model's earlier rows
            earlier = {label: [r for r in rs if r.model == model] for label, rs in earlier.items()}
        frame = comparison_frame(results, earlier)
        figure = comparison_figure(frame if "run" in frame else frame.assign(run=""), self.memory_frame(model))
        if len(self.models_measured()) > 1:
            figure.suptitle(model)
        return figure

    def refresh(self, stale=None) -> None:
        """Redraw the table and the plots from the results so far; ``stale`` names the models whose figures
        changed (after a landed cell, only its model's), None all of them."""

        if not self.results and not self.earlier.value:
            return
        with errors_shown_in(self.messages):
            frame = self.frame()
            figures = {} if stale is None else {m: png for m, png in self._figures.items() if m not in stale}
            self._figures = {model: figures.get(model) or figure_png(self.figure(model))
                             for model in self.models_measured() or [None]}
            self.table.outputs = ()
            self.table.append_display_data(HTML(frame.style.format(precision=4, na_rep="")
                                                .hide(axis="index").to_html()))
            self.plots.outputs = ()
            for png in self._figures.values():
                self.plots.append_display_data(Image(png))

    def generate(self) -> SideBySide | None:
        """Continue the prompt with fp32 and with the chosen variant; shows both, side by side."""

        self.generation.outputs = ()
        self.generate_button.disabled = True
        try:
            with errors_shown_in(self.generation):
                result = side_by_side(self.generate_model.value, self.generate_variant.value, self.prompt.value,
                                      max_new_tokens=self.generate_tokens.value)
                self.generation.append_display_data(HTML(side_by_side_html(result)))
                return result
        finally:
            self.generate_button.disabled = False
        return None

    def write_report(self, out_dir=None):
        """Write the HTML and Markdown report of what the dashboard shows; returns the HTML path."""

        with errors_shown_in(self.messages):
            model = None if self.plan_model.value == "compared model" else self.plan_model.value
            newest = max(self.results, key=lambda r: r.created).run_id if self.results else "empty"
            out = out_dir or work_dir() / "reports" / newest  # a resumed sweep's old rows keep their own run ids
            self.report_path = write_report(self.results, out, self._earlier_results(), device=self.device.value,
                                            plan_model=model, context=None if model is None else 4096)

            self.messages.append_display_data(HTML(f"report written: "
                                                   f"<code>{html.escape(str(self.report_path))}</code>"))
        return self.report_path


def side_by_side_html(result: SideBySide) -> str:
    """Two columns, the baseline's continuation and the variant's: the prompt in grey, the shared text
    plain, the first token that differs highlighted, the rest (which follows from it) muted."""
    e = html.escape

    def column(c) -> str:
        return (f'<div style="flex:1;min-width:0"><b>{e(c.variant)}</b><div style="white-space:pre-wrap;'
                f'font-family:monospace;border:1px solid #ddd;padding:6px"><span style="color:#888">{e(result.prompt)}'
                f'</span>{e(c.common)}<mark style="background:#ffd54f" title="first differing token">{e(c.first)}'
                f'</mark><span style="color:#666">{e(c.rest)}</span></div></div>')

    n = len(result.baseline.tokens)
    verdict = (f"identical for all {n} generated tokens" if result.first_difference is None else
               f"the same for {result.same_tokens} of {n} generated tokens, then token {result.same_tokens + 1} "
               f"differs (marked); what follows it differs because greedy decoding continues from each one's "
               f"own text")
    return (f'<div style="display:flex;gap:12px">{column(result.baseline)}{column(result.variant)}</div>'
            f'<div style="color:#555;font-size:12px">{e(verdict)}</div>')


class MemoryPlanner:
    """Pick a known model (or paste a config.json), a variant, a context and a device; see
    :func:`edgekit.memory.plan.plan_memory`'s verdict and offload plan, and every variant of the
    model stacked against the device's memory (:func:`edgekit.ui.plots.plot_memory_vs_device`)."""

    def __init__(self, model: str = "llama-2-7b", variant: str = "nf4", context: int = 4096,
                 device: str = "laptop-16gb") -> None:

        self.variants = offered_variants()
        self.plotted = offered_variants(per_entry=2)  # the stacked plot: two of each kind, not every group size
        self.model = w.Combobox(value=model, options=known_models() + ["default"], ensure_option=False,
                                description="model", placeholder="short name, folder, config.json or hub id")
        self.pasted = w.Textarea(placeholder="…or paste a config.json here (used when not empty)",
                                 layout=w.Layout(width="420px", height="70px"))
        self.variant = w.Dropdown(options=self.variants, value=variant, description="variant")
        self.context = w.Dropdown(options=[512, 1024, 2048, 4096, 8192, 16384, 32768], value=context,
                                  description="context")
        self.device = w.Dropdown(options=device_profiles(), value=device, description="device")
        self.verdict, self.plot = w.Output(), w.Output()
        for control in (self.model, self.pasted, self.variant, self.context, self.device):
            control.observe(lambda _: self.update(), names="value")
        self.widget = w.VBox([w.HBox([w.VBox([self.model, self.variant, self.context, self.device]), self.pasted]),
                              self.verdict, self.plot])
        self.update()

    def _ipython_display_(self):

        display(self.widget)

    def update(self) -> None:


        config = self.pasted.value.strip() or self.model.value
        self.verdict.clear_output(wait=True)
        self.plot.clear_output(wait=True)
        with errors_shown_in(self.verdict):
            self.plan = plan_memory(config, self.variant.value, context=self.context.value, device=self.device.value)
            with self.verdict:
                print(self.plan.summary())
            frame = device_memory_frame(config, self.plotted, self.device.value, self.context.value)
            frame["model"] = self.plan.model
            fig, ax = plt.subplots(figsize=(8, 4))
            plot_memory_vs_device(frame, ax)
            png = figure_png(fig)
            plt.close(fig)
            with self.plot:
                display(Image(png))


# ---------------------------------------------------------------- quantization knobs (notebook 01)
class QuantKnobs:
    """Live knobs over one weight matrix: bits (2-8), scope (tensor / channel / group) and group size,
    symmetric or with a zero point, integer grid or NF4; each change redraws the grid over the weights that
    share the scale of the largest one and reports the error and the stored bits. ``QuantKnobs(w).show(scheme)``
    does the same without the sliders."""

    def __init__(self, weight, bits: int = 4, granularity: str = "group", group_size: int = 32,
                 symmetric: bool = True, codebook: str = "int") -> None:

        self._plt, self.weight = plt, weight
        sizes = [g for g in (16, 32, 64, 128, 256) if weight.shape[1] % g == 0] or [weight.shape[1]]
        self.bits = w.IntSlider(bits, min=2, max=8, description="bits", continuous_update=False)
        self.granularity = w.ToggleButtons(options=["tensor", "channel", "group"], value=granularity,
                                           description="scope")
        self.group_size = w.SelectionSlider(options=sizes, value=group_size if group_size in sizes else sizes[0],
                                            description="group size", continuous_update=False)
        self.symmetric = w.ToggleButtons(options=[("symmetric", True), ("zero point", False)], value=symmetric,
                                         description="range")
        self.codebook = w.ToggleButtons(options=[("uniform int", "int"), ("NF4", "nf4")], value=codebook,
                                        description="code book")
        self.out, self.summary = w.Output(), w.HTML()
        for control in (self.bits, self.granularity, self.group_size, self.symmetric, self.codebook):
            control.observe(lambda _: self.update(), names="value")
        self.widget = w.VBox([w.HBox([w.VBox([self.bits, self.group_size]), w.VBox([self.granularity,
                              self.symmetric, self.codebook])]), self.summary, self.out])
        self.update()

    def scheme(self) -> Scheme:
        """The scheme the knobs describe (NF4 fixes 4 bits and per-block scope)."""
        if self.codebook.value == "nf4":
            return Scheme(4, "group", self.group_size.value, codebook="nf4")
        return Scheme(self.bits.value, self.granularity.value, self.group_size.value, self.symmetric.value)

    def show(self, scheme: Scheme) -> dict:
        """Draw ``scheme``'s grid over the weights and return its figures (error, SQNR, bits per weight)."""
        error = quantization_error(self.weight, fake_quantize(self.weight, scheme))
        figures = {"scheme": scheme.label, "bits_per_weight": scheme.bits_per_weight(tuple(self.weight.shape)),
                   **error}
        values, levels = group_grid(self.weight, scheme)
        fig, ax = self._plt.subplots(figsize=(7, 3.4))
        plot_quant_grid(values.numpy(), levels.numpy(), ax=ax,
                        title=f"{scheme.label}: {figures['bits_per_weight']:.2f} bits/weight, "
                              f"relative error {figures['relative_error']:.2%}")
        self.out.clear_output(wait=True)

        with self.out:
            display(fig)
        self._plt.close(fig)
        self.summary.value = (f"<b>{html.escape(scheme.label)}</b>: {figures['bits_per_weight']:.2f} bits/weight, "
                              f"relative error {figures['relative_error']:.2%}, SQNR {figures['sqnr_db']:.1f} dB")
        return figures

    def update(self) -> dict:
        with errors_shown_in(self.out):
            self.bits.disabled = self.symmetric.disabled = self.codebook.value == "nf4"
            self.granularity.disabled = self.codebook.value == "nf4"
            self.figures = self.show(self.scheme())
            return self.figures

    def _ipython_display_(self) -> None:

        display(self.widget)
