"""Notebook 04's closing: its front, mixed, calibration and QAT sentences follow the figures, opposite data
flips them."""
from __future__ import annotations

import copy

import pytest

from edgekit.ui.lessons.recovering_quality import closing

MIXED = ["mixed-int2-g64-k2", "mixed-int2-g64-k12"]


@pytest.fixture
def figures():
    """A run like the stored one: the k12 mixed variant dominated by int4-g128, QAT within its error bars."""
    def row(mb, kl, se):
        return {"mb": mb, "kl": kl, "kl_se": se}
    return {
        "scheme": "int2-g64", "eval_tokens": 512, "top": "layers.0.mlp.down_proj", "top_kl": 0.12,
        "low": "layers.5.self_attn.v_proj", "low_kl": 0.0012, "k_rank": 7, "n_modules": 7,
        "variants": {"int4-g128": row(10.91, 0.007, 0.0004), "gptq-int4-g128": row(10.91, 0.0068, 0.0004),
                     "awq-int4-g128": row(10.91, 0.0050, 0.0003), "int8-g64": row(12.5, 0.0002, 0.00002),
                     "int2-g64": row(10.2, 0.21, 0.02), "mixed-int2-g64-k2": row(10.4, 0.12, 0.01),
                     "mixed-int2-g64-k12": row(11.35, 0.043, 0.003), "qat": row(10.2, 0.18, 0.02)},
        "pareto": ["int4-g128", "int8-g64", "int2-g64", *MIXED, "qat"],
        "int2": "int2-g64", "int8": "int8-g64", "mixed": MIXED, "rtn": "int4-g128", "gptq": "gptq-int4-g128",
        "awq": "awq-int4-g128", "qat": "qat", "grid_aligned": [],
        "qat_start": {"kl": 0.2101, "kl_se": 0.03, "train_s": 0}, "qat_end": {"kl": 0.1609, "kl_se": 0.03,
                                                                            "train_s": 120},
        "outlier": 3.1, "real_outlier": 40.2, "real": "smollm2-135m",
    }


def test_a_dominated_mixed_variant_is_said_to_be_off_the_front(figures):
    text = closing(figures)
    assert "`mixed-int2-g64-k12` (11.35 MB, KL 0.0430) is off it: `int4-g128` is no larger" in text
    figures["variants"]["mixed-int2-g64-k12"].update(mb=10.5)
    text = closing(figures)
    assert "`mixed-int2-g64-k12` (10.50 MB, KL 0.0430) is on it" in text
    assert "Mixed precision moves along" not in text


def test_qat_recovery_is_claimed_only_where_the_intervals_separate(figures):
    text = closing(figures)
    assert "a change its error bars do not resolve" in text and "won back" not in text
    figures["qat_start"]["kl_se"] = figures["qat_end"]["kl_se"] = 0.005
    text = closing(figures)
    assert "**QAT** took the 2-bit KL from 0.210" in text and "won back, beyond both error bars" in text
    worse = copy.deepcopy(figures)
    worse["qat_end"]["kl"] = 0.3
    assert "ended further from fp32 than it started" in closing(worse)


def test_calibration_reads_each_difference_on_both_sides(figures):
    text = closing(figures)
    assert "`gptq-int4-g128` (0.00680 ± 0.00040) is not resolved from RTN" in text
    assert "`awq-int4-g128` (0.00500 ± 0.00030) lands closer to fp32 than RTN" in text
    figures["variants"]["awq-int4-g128"]["kl"] = 0.0095
    assert "`awq-int4-g128` (0.00950 ± 0.00030) lands further from fp32 than RTN" in closing(figures)


def test_mixed_against_plain_two_bit(figures):
    assert "`mixed-int2-g64-k12` has a lower KL than `int2-g64` beyond both error bars" in closing(figures)
    figures["variants"]["mixed-int2-g64-k12"].update(kl=0.2, kl_se=0.02)
    assert "`mixed-int2-g64-k12` is not resolved from `int2-g64`" in closing(figures)


def test_grid_aligned_variants_are_named(figures):
    assert "No compared variant reproduces the baseline's own quantization grid" in closing(figures)
    figures["grid_aligned"] = ["int4-g128"]
    assert "`int4-g128` reproduce the baseline's own quantization grid" in closing(figures)


def test_outliers_compared_both_ways(figures):
    assert "fewer outlier channels" in closing(figures)
    figures["outlier"] = 50.0
    assert "outlier channels as large as the real one's" in closing(figures)
