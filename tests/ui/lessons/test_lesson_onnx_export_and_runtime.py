"""Notebook 05's closing: quality read from each interval, speed only where resolved, dynamic int8 said for what it
is on the toy model and pointed at the real model's measured collapse."""
from __future__ import annotations

import pytest

from edgekit.ui.lessons.onnx_export_and_runtime import closing


@pytest.fixture
def figures():
    def row(mb, kl, se, ci, ratio, coverage=0.95, contended=False):
        return {"mb": mb, "kl": kl, "kl_se": se, "delta_ci95": ci, "speed_ratio_ci95": ratio,
                "speed_coverage": coverage, "contended": contended}
    return {
        "n_past": 12, "max_diff": 3.1e-5, "parity_tokens": 512, "parity_top1": 1.0,
        "nodes_raw": 1400, "nodes_all": 600, "fused": "SkipSimplifiedLayerNormalization",
        "model": "default", "baseline": "fp32", "tokens": 3968, "base_mb": 27.28,
        "rows": {"onnx-fp32": row(27.3, 1e-9, 1e-10, [-0.01, 0.01], [0.6, 0.9]),
                 "onnx-int8": row(7.2, 0.004, 0.0003, [-0.2, 0.3], [1.2, 1.6]),
                 "onnx-int4-g32": row(8.5, 0.012, 0.0005, [0.1, 0.9], [0.9, 1.1])},
        "warned": True, "ran_on": "CPUExecutionProvider", "knob_runs": 6,
    }


def test_dynamic_int8_on_the_toy_model_points_at_the_real_one(figures):
    text = closing(figures)
    assert "On `default` dynamic `onnx-int8` is within noise of the baseline; that is this model's figure" in text
    assert "on `smollm2-135m`" in text
    figures["model"] = "smollm2-135m"
    figures["rows"]["onnx-int8"]["delta_ci95"] = [70.0, 95.0]
    text = closing(figures)
    assert "On this model dynamic `onnx-int8` costs perplexity beyond its interval" in text
    assert "that is this model's figure" not in text


def test_quality_rows_read_both_sides(figures):
    text = closing(figures)
    assert "`onnx-int4-g32` 8.50 MB, KL 0.0120 ± 0.00050, Δppl [+0.10, +0.90]% (worse)" in text
    figures["rows"]["onnx-int4-g32"]["delta_ci95"] = [-0.9, -0.1]
    assert "Δppl [-0.90, -0.10]% (better)" in closing(figures)


def test_speed_only_where_resolved(figures):
    text = closing(figures)
    assert "`onnx-fp32` slower; `onnx-int8` faster; `onnx-int4-g32` no resolved difference" in text
    figures["rows"]["onnx-int8"]["contended"] = True
    figures["rows"]["onnx-fp32"]["speed_coverage"] = 0.75
    text = closing(figures)
    assert "`onnx-int8` not comparable: contended" in text
    assert "`onnx-fp32` not resolved: too few repetitions" in text


def test_no_fusion_is_said(figures):
    assert "fusing chains of small ops into SkipSimplifiedLayerNormalization" in closing(figures)
    figures.update(fused="-", nodes_all=1400)
    text = closing(figures)
    assert "(as many), without writing any op the exporter had not" in text
