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


@pytest.mark.parametrize("metric", ["delta_ppl_pct", "KL"])
def test_quality_plot_marks_the_front(metric):
    ax = plot_quality_vs_size(summary_frame(RESULTS), metric=metric)
    (front,) = [line for line in ax.get_lines() if line.get_label() == "Pareto front"]
    assert front.get_xdata().tolist() == [6, 10, 40]  # "worse" is beaten by int8
    assert sorted(t.get_text() for t in ax.texts) == ["fp32", "int8", "nf4", "worse"]


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
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["Pareto front", "a", "b"]
    assert figure_png(comparison_figure(frame))[:4] == b"\x89PNG"
