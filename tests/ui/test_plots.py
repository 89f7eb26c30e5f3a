"""edgekit.ui.plots: the Pareto front is the set no other variant beats, and both frame shapes
(summary_frame with display labels, results_frame with raw keys) plot the same points."""
import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from edgekit.measure.store import Result, results_frame  # noqa: E402
from edgekit.ui.plots import (  # noqa: E402
    comparison_figure,
    figure_png,
    normalize,
    pareto_front,
    plot_latency_percentiles,
    plot_quality_vs_size,
)
from edgekit.workflows.compare import summary_frame  # noqa: E402


def _result(variant, size, delta, kl, p50=None, error=None):
    metrics = {} if error else {"weight_bytes": size, "delta_ppl_pct": delta,
                                "delta_ppl_pct_ci95": [delta - 1, delta + 1],
                                "kl_divergence": kl, "kl_divergence_se": kl / 10, "perplexity": 10 + delta,
                                "peak_rss_bytes": 3 * size}
    if p50 and not error:
        metrics.update(latency_ms_p50=p50, latency_ms_p95=2 * p50, latency_ms_p99=3 * p50)
    return Result("m", variant, metrics=metrics, status="error" if error else "ok", error=error)


RESULTS = [_result("fp32", 40e6, 0.0, 0.0, 5), _result("int8", 10e6, 0.1, 0.001, 6),
           _result("nf4", 6e6, 1.0, 0.01, 7), _result("worse", 12e6, 2.0, 0.02, 8),
           _result("broken", 0, 0, 0, error="boom")]


def test_pareto_front():
    sizes, losses = [40, 10, 6, 12, 6], [0.0, 0.1, 1.0, 2.0, 1.5]
    assert pareto_front(sizes, losses).tolist() == [True, True, True, False, False]
    assert pareto_front([1, 1], [2, 2]).tolist() == [True, True]  # ties beat nobody


def test_both_frame_shapes_normalize_alike():
    summary, raw = normalize(summary_frame(RESULTS)), normalize(results_frame(RESULTS))
    assert list(summary["variant"]) == list(raw["variant"]) == ["fp32", "int8", "nf4", "worse"]  # error dropped
    for key in ("weight_bytes", "delta_ppl_pct", "kl_divergence", "latency_ms_p99"):
        np.testing.assert_allclose(summary[key].astype(float), raw[key].astype(float))
    assert summary["weight_bytes"].tolist() == [40, 10, 6, 12]  # megabytes
    assert summary["delta_ppl_pct_ci95"][1] == pytest.approx((-0.9, 1.1), abs=0.01)


@pytest.mark.parametrize(("metric", "drawn"), [("delta_ppl_pct", [6, 10, 40]), ("KL", [6, 10])])
def test_quality_plot_marks_the_front(metric, drawn):
    ax = plot_quality_vs_size(summary_frame(RESULTS), metric=metric)
    (front,) = [line for line in ax.get_lines() if line.get_label().startswith("Pareto front")]
    assert front.get_xdata().tolist() == drawn  # "worse" is beaten by int8; KL 0 is off a log axis
    labels = sorted(t.get_text() for t in ax.texts if not t.get_text().startswith("at KL 0"))
    assert labels == (["fp32"] if metric == "delta_ppl_pct" else []) + ["int8", "nf4", "worse"]


def test_unknown_metric():
    with pytest.raises(ValueError, match="choose one of"):
        plot_quality_vs_size(summary_frame(RESULTS), metric="speed")


def test_latency_and_empty_frames():
    ax = plot_latency_percentiles(results_frame(RESULTS))
    assert len(ax.patches) == 3 * 4
    assert ax.patches[0].get_height() == 5
    empty = plot_latency_percentiles(pd.DataFrame({"variant": ["x"], "error": ["boom"]}))
    assert empty.texts[0].get_text() == "no latency measured"


def test_several_runs_get_their_own_markers():
    frame = pd.concat([summary_frame(RESULTS).assign(run="a"), summary_frame(RESULTS[:2]).assign(run="b")])
    ax = plot_quality_vs_size(frame)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "Pareto front (on the |Δ| bound of each 95% interval)",
        "a, error bars: 95% interval of Δppl", "b, error bars: 95% interval of Δppl"]
    assert figure_png(comparison_figure(frame))[:4] == b"\x89PNG"


def _frame(rows):
    """A results frame from (variant, MB, Δppl %, its 95% interval, KL, KL se) rows."""
    return results_frame([Result("m", v, metrics={"weight_bytes": size * 1e6, "delta_ppl_pct": d,
                                                   "delta_ppl_pct_ci95": ci, "kl_divergence": kl,
                                                   "kl_divergence_se": se})
                          for v, size, d, ci, kl, se in rows])


def _front(ax):
    (line,) = [line for line in ax.get_lines() if line.get_label().startswith("Pareto front")]
    return line.get_xdata().tolist()


def test_the_legend_says_what_the_error_bars_are():
    labels = {m: [t.get_text() for t in plot_quality_vs_size(results_frame(RESULTS), m).get_legend().get_texts()]
              for m in ("delta_ppl_pct", "kl_divergence")}
    assert "error bars: 95% interval of Δppl" in labels["delta_ppl_pct"]
    assert "error bars: ±1 SE of KL" in labels["kl_divergence"]
    assert not any("SE" in label for label in labels["delta_ppl_pct"])


def test_a_negative_delta_within_noise_is_not_rewarded():
    # "lucky" reads Δ -0.3% but its interval [-1.6, +1.1] holds zero: bound 1.6, beaten by "tight" (bound 0.3)
    rows = [("fp32", 40, 0.0, None, 0.0, 0.0), ("tight", 11, 0.1, [-0.1, 0.3], 0.002, 0.0002),
            ("lucky", 12, -0.3, [-1.6, 1.1], 0.009, 0.001)]
    ax = plot_quality_vs_size(_frame(rows), "delta_ppl_pct")
    assert _front(ax) == [11, 40]
    # resolved close to zero ([-0.2, -0.1]: bound 0.2 < 0.3) it earns its place
    rows[2] = ("lucky", 12, -0.15, [-0.2, -0.1], 0.009, 0.001)
    assert _front(plot_quality_vs_size(_frame(rows), "delta_ppl_pct")) == [11, 12, 40]


def test_kl_goes_on_a_log_axis_when_it_spans_decades():
    rows = [("fp32", 40, 0.0, None, 0.0, 0.0), ("int8", 10, 0.1, [0.0, 0.2], 0.0004, 0.00005),
            ("int4", 6, 2.0, [1.5, 2.5], 0.04, 0.004), ("int2", 4, 40.0, [30, 50], 0.9, 0.05)]
    ax = plot_quality_vs_size(_frame(rows), "kl_divergence")
    assert ax.get_yscale() == "log"
    assert any("at KL 0" in t.get_text() and "fp32" in t.get_text() for t in ax.texts)
    near = [("fp32", 40, 0.0, None, 0.0, 0.0), ("a", 10, 0.1, [0.0, 0.2], 0.01, 0.001),
            ("b", 6, 2.0, [1.5, 2.5], 0.04, 0.004)]
    assert plot_quality_vs_size(_frame(near), "kl_divergence").get_yscale() == "linear"


def test_labels_never_overprint():
    # twelve variants crowded into two spots: every label either finds a free place or is listed beside
    rows = [(f"variant-{i}", 10 + 0.01 * i, 1.0 + 0.001 * i, [0.5, 1.5], 0.01, 0.001) for i in range(6)]
    rows += [(f"other-{i}", 20 + 0.01 * i, 2.0, [1.5, 2.5], 0.02, 0.001) for i in range(6)]
    ax = plot_quality_vs_size(_frame(rows), "delta_ppl_pct")
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    notes = [t for t in ax.texts if t.get_text().startswith(("variant-", "other-"))]
    boxes = [t.get_window_extent(renderer) for t in notes]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not a.overlaps(b), "two labels overprint"
    listed = [t.get_text() for t in ax.texts if t.get_text().startswith("not labelled in place")]
    named = {t.get_text() for t in notes} | set("".join(listed).splitlines()[1:])
    assert named == {r[0] for r in rows}
