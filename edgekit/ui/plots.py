"""matplotlib figures of a comparison: quality against size with the Pareto front, latency
percentiles, memory against a device's budget. Plotting only, no measurement.

The quality and latency plots take the DataFrame of :func:`edgekit.workflows.compare.summary_frame`
(display labels, megabytes) or of :func:`edgekit.measure.store.results_frame` / ``ResultStore.dataframe()`` (raw
metric keys, bytes) and an optional ``ax``; it returns the Axes it drew on. Rows with an
error or without the needed metric are left out. When the frame has a ``run`` column with
several values (earlier runs laid beside the new one), each run gets its own marker. The
memory plot takes :func:`edgekit.ui.report.device_memory_frame` (a plan per variant).

Pareto front as in multi-objective model selection (a variant is on the front when no other
variant is both smaller and at least as good), computed on KL or on the largest ``|Δppl|`` each 95%
interval allows, so a negative Δ within noise is never rewarded. Error bars are the 95% interval of the
perplexity delta or ±1 standard error of the KL divergence (as llama.cpp's ``perplexity
--kl-divergence`` reports them), and the legend says which. Point labels never overprint
(:func:`place_labels`).
"""
from __future__ import annotations

import io

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import ScalarFormatter

from edgekit.ui.narrate import loss_bound, pareto_front

# raw metric key -> the label summary_frame gives it
LABELS = {"variant": "variant", "delta_ppl_pct": "Δppl %", "delta_ppl_pct_ci95": "Δppl 95% CI",
          "kl_divergence": "KL", "kl_divergence_se": "KL ±se", "top1_agreement": "top-1",
          "weight_bytes": "weights MB", "peak_rss_bytes": "peak RSS MB", "ttft_ms": "TTFT ms",
          "latency_ms_p50": "p50 ms", "latency_ms_p95": "p95 ms", "latency_ms_p99": "p99 ms", "error": "error"}
MEGABYTE_KEYS = ("weight_bytes", "peak_rss_bytes")
QUALITY_METRICS = {"delta_ppl_pct": "perplexity change vs baseline (%)",
                   "kl_divergence": "KL divergence vs baseline (nats/token)"}
MARKERS = "os^Dv<>Pp*"


def normalize(frame: pd.DataFrame) -> pd.DataFrame:
    """One shape for both kinds of frame: raw metric keys, sizes in MB, failed rows dropped."""
    by_label = {label: key for key, label in LABELS.items()}
    out = frame.rename(columns={c: by_label[c] for c in frame.columns if c in by_label and c not in LABELS})
    out = out.loc[:, ~out.columns.duplicated()].copy()
    raw_bytes = not any(label in frame.columns for label in ("weights MB", "peak RSS MB"))
    for key in MEGABYTE_KEYS:
        if key in out and raw_bytes:
            out[key] = pd.to_numeric(out[key], errors="coerce") / 1e6
    if "error" in out:
        out = out[out["error"].isna()]
    if "status" in out:
        out = out[out["status"] == "ok"]
    if "delta_ppl_pct_ci95" in out:
        out["delta_ppl_pct_ci95"] = out["delta_ppl_pct_ci95"].map(_interval)
    if "run" not in out:
        out["run"] = ""
    return out.reset_index(drop=True)


def _interval(value) -> tuple[float, float] | None:
    """A 95% interval from a [lo, hi] list (results frame) or "[+lo, +hi]" text (summary frame)."""
    if isinstance(value, str):
        lo, hi = value.strip("[]").split(",")
        return float(lo), float(hi)
    if isinstance(value, (list, tuple, np.ndarray)) and len(value) == 2:
        return float(value[0]), float(value[1])
    return None


def _runs(frame: pd.DataFrame):
    for i, (run, rows) in enumerate(frame.groupby("run", sort=False)):
        yield MARKERS[i % len(MARKERS)], run, rows


def quality_losses(data: pd.DataFrame, metric: str) -> np.ndarray:
    """The loss the Pareto front is computed on, one per row: the KL divergence itself, or for a perplexity
    change the largest ``|Δ|`` its 95% interval allows (:func:`edgekit.ui.narrate.loss_bound`), so a negative
    Δ within noise is never rewarded; ``|Δ|`` where a row has no interval."""
    values = pd.to_numeric(data[metric], errors="coerce").to_numpy(float)
    if metric != "delta_ppl_pct":
        return values
    intervals = data["delta_ppl_pct_ci95"] if "delta_ppl_pct_ci95" in data else [None] * len(data)
    return np.array([loss_bound(ci) if ci is not None else abs(v) for v, ci in zip(values, intervals)])


ERROR_BARS = {"delta_ppl_pct": "error bars: 95% interval of Δppl", "kl_divergence": "error bars: ±1 SE of KL"}
FRONT_ON = {"delta_ppl_pct": "Pareto front (on the |Δ| bound of each 95% interval)",
            "kl_divergence": "Pareto front (on KL)"}


def plot_quality_vs_size(frame: pd.DataFrame, metric: str = "delta_ppl_pct", ax: Axes | None = None) -> Axes:
    """Quality loss (``delta_ppl_pct`` or ``kl_divergence``) against weight megabytes.

    The Pareto front (dashed line through the circled variants) is computed on :func:`quality_losses`: KL, or
    the ``|Δ|`` bound of each perplexity interval. The legend says what the error bars are (95% interval of
    Δppl, ±1 standard error of KL). KL goes on a log axis when its positive values span more than a decade;
    a variant at KL 0 (the baseline itself) is then named under the plot instead. Labels are placed where
    they overprint neither each other nor a point; one that finds no free place is listed beside the plot."""
    metric = {label: key for key, label in LABELS.items()}.get(metric, metric)
    if metric not in QUALITY_METRICS:
        raise ValueError(f"metric {metric!r}; choose one of {', '.join(QUALITY_METRICS)}")
    ax = ax or plt.subplots(figsize=(6.4, 4.2))[1]
    data = normalize(frame)
    if metric not in data or "weight_bytes" not in data:
        return _empty(ax, "no quality results to plot")
    data = data.dropna(subset=[metric, "weight_bytes"])
    if data.empty:
        return _empty(ax, "no quality results to plot")
    data = data.assign(**{metric: pd.to_numeric(data[metric], errors="coerce")}).reset_index(drop=True)
    on_front = pareto_front(data["weight_bytes"], quality_losses(data, metric))
    log_axis = metric == "kl_divergence" and _spans_decades(data[metric])
    shown = data[data[metric] > 0] if log_axis else data
    several_runs = shown["run"].nunique() > 1
    for marker, run, rows in _runs(shown):
        label = f"{run}, {ERROR_BARS[metric]}" if several_runs else ERROR_BARS[metric]
        ax.errorbar(rows["weight_bytes"], rows[metric], yerr=_error_bars(rows, metric), fmt=marker, capsize=3,
                    label=label)
    front = data[on_front & data.index.isin(shown.index)].sort_values("weight_bytes")
    ax.plot(front["weight_bytes"], front[metric], linestyle="--", color="tab:red", alpha=0.7,
            label=FRONT_ON[metric])
    ax.scatter(front["weight_bytes"], front[metric], s=140, facecolors="none", edgecolors="tab:red")
    if log_axis:
        ax.set_yscale("log", nonpositive="clip")
        zero = data.loc[~data.index.isin(shown.index), "variant"].tolist()
        if zero:
            ax.text(0.0, -0.16, f"at KL 0 (not drawn on a log axis): {', '.join(map(str, zero))}",
                    transform=ax.transAxes, fontsize=7, color="grey", va="top")
    else:
        ax.axhline(0, color="grey", linewidth=0.6)
    ax.set_xlabel("weight memory (MB)")
    ax.set_ylabel(QUALITY_METRICS[metric])
    ax.set_title("quality lost vs bytes kept")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    place_labels(ax, shown["weight_bytes"].to_numpy(float), shown[metric].to_numpy(float),
                 [str(v) for v in shown["variant"]])
    return ax


def _spans_decades(values: pd.Series) -> bool:
    positive = values[values > 0]
    return len(positive) > 1 and positive.max() / positive.min() > 10


# offsets (points) tried in turn for a label: right, above, left, below, then further out with a leader line
_OFFSETS = [(6, 4), (6, -10), (-6, 4), (-6, -10), (0, 9), (0, -14)]
_FAR = [(dx * r, dy * r) for r in (2.5, 4.0) for dx, dy in ((1, 1), (1, -1), (-1, 1), (-1, -1), (0, 1.2), (0, -1.2))]
_FAR = [(dx * 8, dy * 8) for dx, dy in _FAR]


def place_labels(ax: Axes, xs, ys, labels: list[str], fontsize: float = 8) -> list:
    """Annotate each point with its label at the first offset where it overlaps no placed label, no point, not
    the legend, and stays inside the axes; labels that find no place are listed beside the plot, so no label
    overprints another. Returns the annotations placed (the listing, if any, is ``ax.texts[-1]``)."""
    fig = ax.figure
    if not hasattr(fig.canvas, "get_renderer"):  # a bare Figure (comparison_figure): measure with Agg
        FigureCanvasAgg(fig)
    fig.draw_without_rendering()  # settle layout and limits before measuring
    renderer = fig.canvas.get_renderer()
    to_pixels = ax.transData.transform
    points = [to_pixels((x, y)) for x, y in zip(xs, ys) if np.isfinite(x) and np.isfinite(y)]
    marker_radius = 4 * fig.dpi / 72
    taken = [(px - marker_radius, py - marker_radius, px + marker_radius, py + marker_radius) for px, py in points]
    if ax.get_legend() is not None:  # a label never hides under the legend either
        taken.append(tuple(ax.get_legend().get_window_extent(renderer).extents))
    frame = ax.get_window_extent(renderer)
    placed, unplaced = [], []
    order = sorted(range(len(labels)), key=lambda i: (xs[i], ys[i]))
    for i in order:
        if not (np.isfinite(xs[i]) and np.isfinite(ys[i])):
            continue
        for n, offset in enumerate(_OFFSETS + _FAR):
            far = n >= len(_OFFSETS)
            ha = "left" if offset[0] > 0 else "right" if offset[0] < 0 else "center"
            note = ax.annotate(labels[i], (xs[i], ys[i]), textcoords="offset points", xytext=offset,
                               fontsize=fontsize, ha=ha, va="center", annotation_clip=False,
                               arrowprops={"arrowstyle": "-", "color": "grey", "lw": 0.5} if far else None)
            note.set_in_layout(False)
            box = note.get_window_extent(renderer)
            inside = (box.x0 >= frame.x0 and box.x1 <= frame.x1 and box.y0 >= frame.y0 and box.y1 <= frame.y1)
            if inside and not any(_overlap(box.extents, other) for other in taken):
                taken.append(tuple(box.extents))
                placed.append(note)
                break
            note.remove()
        else:
            unplaced.append(labels[i])
    if unplaced:
        ax.text(1.02, 1.0, "not labelled in place:\n" + "\n".join(unplaced), transform=ax.transAxes,
                fontsize=fontsize - 1, va="top", ha="left", color="dimgrey")
    return placed


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _error_bars(rows: pd.DataFrame, metric: str):
    if metric == "delta_ppl_pct" and "delta_ppl_pct_ci95" in rows:
        lows, highs = [], []
        for value, ci in zip(rows[metric], rows["delta_ppl_pct_ci95"]):
            lows.append(value - ci[0] if ci else 0.0)
            highs.append(ci[1] - value if ci else 0.0)
        return np.clip(np.array([lows, highs]), 0, None)
    if metric == "kl_divergence" and "kl_divergence_se" in rows:
        return pd.to_numeric(rows["kl_divergence_se"], errors="coerce").fillna(0).to_numpy(float)
    return None


def plot_latency_percentiles(frame: pd.DataFrame, ax: Axes | None = None) -> Axes:
    """Per-token decode latency P50/P95/P99 of every variant as grouped bars (log scale
    when they span more than a decade). A percentile withheld for too few samples (:mod:`edgekit.measure.speed`)
    has no bar; a variant timed under contention is labelled so."""
    ax = ax or plt.subplots(figsize=(6.4, 4.2))[1]
    data = normalize(frame)
    keys = [k for k in ("latency_ms_p50", "latency_ms_p95", "latency_ms_p99") if k in data]
    for key in keys:
        data[key] = pd.to_numeric(data[key], errors="coerce")  # withheld: None or "-"
    keys = [k for k in keys if data[k].notna().any()]
    data = data.dropna(subset=keys[:1]) if keys else data.iloc[0:0]
    if data.empty:
        return _empty(ax, "no latency measured")
    labels = _point_labels(data)
    x = np.arange(len(data))
    width = 0.8 / len(keys)
    for i, key in enumerate(keys):
        ax.bar(x + (i - (len(keys) - 1) / 2) * width, data[key], width, label=key.rsplit("_", 1)[1].upper())
    ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("decode latency per token (ms)")
    ax.set_title("latency percentiles")
    values = data[keys].to_numpy(float)
    if np.nanmin(values) > 0 and np.nanmax(values) / np.nanmin(values) > 10:
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return ax


def plot_memory_vs_device(frame: pd.DataFrame, ax: Axes | None = None) -> Axes:
    """Planned memory of every variant on one device, stacked (weights, KV cache, activations,
    runtime), against the device's usable budget (dashed line); a measured peak RSS, where
    the frame has one, is marked beside its bar. ``frame`` comes from
    :func:`edgekit.ui.report.device_memory_frame`."""
    ax = ax or plt.subplots(figsize=(6.4, 4.2))[1]
    data = frame.dropna(subset=["total_bytes"]).reset_index(drop=True) if "total_bytes" in frame else frame.iloc[0:0]
    if data.empty:
        return _empty(ax, "no memory plan for this device")
    gib = 1024 ** 3
    x = np.arange(len(data))
    bottom = np.zeros(len(data))
    for key, label in (("weight_bytes", "weights"), ("kv_cache_bytes", "KV cache"),
                       ("activation_bytes", "activations"), ("runtime_overhead_bytes", "runtime")):
        values = data[key].to_numpy(float) / gib
        ax.bar(x, values, 0.6, bottom=bottom, label=label)
        bottom += values
    for i, fits in enumerate(data["fits"]):
        if not fits:
            ax.annotate("✗", (x[i], bottom[i]), ha="center", va="bottom", color="tab:red", fontsize=12)
    if "peak_rss_bytes" in data and data["peak_rss_bytes"].notna().any():
        ax.scatter(x + 0.38, data["peak_rss_bytes"].to_numpy(float) / gib, marker="_", s=200, color="black",
                   label="measured peak RSS", zorder=3)
    device = data["device"].iloc[0]
    ax.axhline(data["budget_bytes"].iloc[0] / gib, color="tab:red", linestyle="--", label=f"{device} budget")
    ax.set_xticks(x, data["variant"], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("GiB")
    ax.set_title(f"{data['model'].iloc[0]} on {device} (context {data['context'].iloc[0]})", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    return ax


def plot_throughput_vs_p99(sweep: pd.DataFrame, p99_target_ms: float | None = None, load: pd.DataFrame | None = None,
                           ax: Axes | None = None) -> Axes:
    """Batch-size sweep (:func:`edgekit.serve.batching.batch_sweep`): throughput against P99 latency, one
    point per batch size, with the P99 target as a vertical line; dynamic-batcher load runs
    (rows with ``requests_per_s`` and ``latency_ms_p99``), where given, as crosses."""
    ax = ax or plt.subplots(figsize=(6.4, 4.2))[1]
    if sweep.empty:
        return _empty(ax, "no batch sweep")
    ax.plot(sweep["latency_ms_p99"], sweep["tokens_per_s"], "o-", label="batch sweep")
    for _, row in sweep.iterrows():
        ax.annotate(f"b={int(row['batch_size'])}", (row["latency_ms_p99"], row["tokens_per_s"]),
                    textcoords="offset points", xytext=(4, 4), fontsize=8)
    if load is not None and not load.empty:
        tokens = load["requests_per_s"] * load["new_tokens"] if "new_tokens" in load else load["requests_per_s"]
        ax.scatter(load["latency_ms_p99"], tokens, marker="x", s=60, color="tab:green",
                   label="dynamic batcher under Poisson load", zorder=3)
    if p99_target_ms is not None:
        ax.axvline(p99_target_ms, color="tab:red", linestyle="--", label=f"P99 target {p99_target_ms:g} ms")
    ax.set_xlabel("P99 request latency (ms)")
    ax.set_ylabel("throughput (generated tokens/s)")
    ax.set_title("throughput against tail latency")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return ax


def plot_load_sweep(sweep: pd.DataFrame, ax: Axes | None = None) -> Axes:
    """A server under open-loop load (:func:`edgekit.serve.load_test.load_sweep`): P50/P99 against the
    offered rate with the P99 target, and on a second axis the requests refused (429) or timed out (504)."""
    ax = ax or plt.subplots(figsize=(6.4, 4.2))[1]
    if sweep.empty:
        return _empty(ax, "no load sweep")
    rate = sweep["offered_rate_per_s"]
    ax.plot(rate, sweep["latency_ms_p50"], "o-", label="P50")
    ax.plot(rate, sweep["latency_ms_p99"], "s-", label="P99")
    ax.axhline(sweep["p99_target_ms"].iloc[0], color="tab:red", linestyle="--",
               label=f"P99 target {sweep['p99_target_ms'].iloc[0]:.0f} ms")
    lost = sweep["rejected"] + sweep["timed_out"]
    twin = ax.twinx()
    twin.bar(rate, lost, width=rate * 0.15, color="grey", alpha=0.35, label="rejected + timed out")
    twin.set_ylabel("requests refused or timed out")
    twin.set_ylim(0, max(1, int(sweep["requests"].max())))
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.set_xlabel("offered rate (requests/s, Poisson)")
    ax.set_ylabel("latency from arrival (ms)")
    ax.set_title("the server under open-loop load")
    lines, labels = ax.get_legend_handles_labels()
    bars, bar_labels = twin.get_legend_handles_labels()
    ax.legend(lines + bars, labels + bar_labels, fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    return ax


def _point_labels(data: pd.DataFrame) -> list[str]:
    flags = (data["contended"].map(lambda c: c is True or c == "CONTENDED") if "contended" in data
             else [False] * len(data))
    names = [f"{v} (contended)" if flag else v for v, flag in zip(data["variant"], flags)]
    if data["run"].nunique() > 1:
        return [f"{v} ({r})" for v, r in zip(names, data["run"])]
    return names


def _empty(ax: Axes, message: str) -> Axes:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="grey")
    ax.set_axis_off()
    return ax


def comparison_figure(frame: pd.DataFrame, memory: pd.DataFrame | None = None) -> Figure:
    """The dashboard's and the report's figure: Δppl and KL vs size, latency, memory on a device."""
    panels = 4 if memory is not None else 3
    fig = Figure(figsize=(5.2 * panels, 4.4), layout="constrained")
    axes = fig.subplots(1, panels)
    plot_quality_vs_size(frame, "delta_ppl_pct", axes[0])
    plot_quality_vs_size(frame, "kl_divergence", axes[1])
    plot_latency_percentiles(frame, axes[2])
    if memory is not None:
        plot_memory_vs_device(memory, axes[3])
    return fig


def plot_error_histograms(histograms: dict, ax: Axes | None = None) -> Axes:
    """Quantization error histograms, one step line per scheme, from
    ``{label: edgekit.quantizers.reference.error_histogram(...)}`` (share of weights per bin, log scale)."""
    ax = ax or plt.subplots(figsize=(6.4, 4.2))[1]
    for label, (counts, edges) in histograms.items():
        counts = np.asarray(counts, float)
        ax.stairs(counts / counts.sum(), np.asarray(edges, float), label=label)
    ax.set_yscale("log")
    ax.set_xlabel("error of a weight (dequantized − original)")
    ax.set_ylabel("share of weights")
    ax.set_title("where the rounding error falls")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return ax


def plot_weight_histogram(weight, k_sigma: float = 3.0, bins: int = 200, ax: Axes | None = None) -> Axes:
    """A weight matrix's value distribution with ±k·σ marked: what lies beyond is an outlier."""
    ax = ax or plt.subplots(figsize=(6.4, 4.2))[1]
    values = np.asarray(weight, float).reshape(-1)
    mean, sigma = values.mean(), values.std()
    ax.hist(values, bins=bins, log=True, color="tab:blue", alpha=0.8)
    for sign in (-1, 1):
        ax.axvline(mean + sign * k_sigma * sigma, color="tab:red", linestyle="--",
                   label=f"±{k_sigma:g}σ" if sign > 0 else None)
    ax.set_xlabel("weight value")
    ax.set_ylabel("count")
    ax.set_title("weight distribution and outliers")
    ax.legend(fontsize=8)
    return ax


def plot_quant_grid(values, levels, title: str = "", bins: int = 60, ax: Axes | None = None) -> Axes:
    """The weights that share one scale (histogram) with the grid they are rounded to (one line per level):
    how many levels the bulk of the weights really uses, and how far the largest one stretches the grid."""
    ax = ax or plt.subplots(figsize=(6.4, 3.6))[1]
    values, levels = np.asarray(values, float).reshape(-1), np.asarray(levels, float).reshape(-1)
    ax.hist(values, bins=bins, color="tab:blue", alpha=0.75, label=f"{len(values)} weights sharing one scale")
    for i, level in enumerate(levels):
        ax.axvline(level, color="tab:orange", linewidth=0.8, alpha=0.9,
                   label=f"{len(levels)} levels" if i == 0 else None)
    ax.set_xlabel("weight value")
    ax.set_ylabel("count")
    ax.set_title(title or "weights and their quantization grid", fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    return ax


def plot_layer_errors(frame: pd.DataFrame, metric: str = "relative_error", ax: Axes | None = None) -> Axes:
    """Error of every decoder-block linear layer (x, in model order) under each scheme (one line
    each), from :func:`edgekit.quantizers.reference.layer_errors`; log scale."""
    ax = ax or plt.subplots(figsize=(9, 4.2))[1]
    layers = list(dict.fromkeys(frame["layer"]))
    for scheme, rows in frame.groupby("scheme", sort=False):
        values = rows.set_index("layer").loc[layers, metric]
        ax.plot(range(len(layers)), values, marker=".", label=scheme)
    ax.set_xticks(range(len(layers)), [name.split(".", 2)[-1].replace("layers.", "") for name in layers],
                  rotation=90, fontsize=6)
    ax.set_yscale("log")
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_title("error per layer across the model")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    return ax


def figure_png(fig: Figure, dpi: int = 96) -> bytes:
    """A figure as PNG bytes (for embedding in a report)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def plot_sensitivity_heatmap(table: pd.DataFrame, ax: Axes | None = None) -> Axes:
    """Layer sensitivity (:func:`edgekit.quantizers.sensitivity.heatmap_table`: block rows × module
    columns of KL vs baseline) as a heat map, each cell labelled with its KL."""
    ax = ax or plt.subplots(figsize=(7.2, 0.45 * len(table) + 1.6))[1]
    image = ax.imshow(table.to_numpy(float), cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(table.columns)), [c.split(".")[-1] for c in table.columns], rotation=30)
    ax.set_yticks(range(len(table.index)), [f"block {b}" for b in table.index])
    for (i, j), value in np.ndenumerate(table.to_numpy(float)):
        ax.text(j, i, f"{value:.3g}", ha="center", va="center", fontsize=7, color="white")
    ax.figure.colorbar(image, ax=ax, label="KL divergence vs baseline (nats/token)")
    ax.set_title("sensitivity: one layer quantized, the rest at baseline")
    return ax


def plot_activation_outliers(maxima: dict, title: str = "", key: str = "attention", ax: Axes | None = None) -> Axes:
    """max |x| per input channel (x axis) of every layer (one line a layer, darker = deeper) from
    :func:`edgekit.quantizers.smoothquant.activation_maxima`; log scale, so a few outlier channels stand out."""
    ax = ax or plt.subplots(figsize=(6.4, 3.6))[1]
    values = np.asarray(maxima[key])
    colors = plt.cm.viridis(np.linspace(0, 1, len(values)))
    for layer, (row, color) in enumerate(zip(values, colors)):
        ax.plot(np.arange(len(row)), row, color=color, linewidth=0.7, alpha=0.8)
    ax.set_yscale("log")
    ax.set_xlabel(f"input channel of {'q_proj' if key == 'attention' else key} ({values.shape[1]})")
    ax.set_ylabel("max |activation|")
    ax.set_title(title or f"activation maxima per channel, {len(values)} layers")
    ax.grid(alpha=0.3)
    return ax


def plot_flips_vs_kl(rows: list[dict], ax: Axes | None = None) -> Axes:
    """Each variant's flip rate (answers changed either way, per item) against its KL from the baseline, one
    marker per task. ``rows``: :func:`edgekit.ui.lessons.task_flips.figures_from`'s rows (``kl``, ``kl_se``,
    ``flip_rate``, ``flip_rate_ci``). Error bars: the flip rate's Wilson 95% interval over the items and KL's
    ±1 standard error, as the legend says."""
    ax = ax or plt.subplots(figsize=(7, 4))[1]
    rows = [r for r in rows if r.get("kl") is not None]
    if not rows:
        return _empty(ax, "no paired rows with a KL")
    for marker, task in zip(MARKERS, dict.fromkeys(r["task"] for r in rows)):
        mine = [r for r in rows if r["task"] == task]
        rate = np.array([r["flip_rate"] for r in mine])
        low, high = np.array([r["flip_rate_ci"] for r in mine]).T
        ax.errorbar([r["kl"] for r in mine], rate, yerr=[rate - low, high - rate],
                    xerr=[r.get("kl_se") or 0 for r in mine], fmt=marker, capsize=3,
                    label=f"{task} (bars: flip rate Wilson 95% CI, KL ±1 se)")
        for r in mine:
            ax.annotate(r["variant"], (r["kl"], r["flip_rate"]), textcoords="offset points", xytext=(4, 4),
                        fontsize=8)
    ax.set_xscale("symlog", linthresh=1e-3)
    ax.set_xlabel("KL divergence vs baseline (nats/token)")
    ax.set_ylabel("answers flipped (share of items, both ways)")
    ax.legend(fontsize=8)
    return ax
