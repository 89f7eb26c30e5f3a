"""Notebook 07's closing reads each Δppl interval on both sides, the fronts from on_front, speed from the
protocol's ratio; opposite data changes the sentences."""
from __future__ import annotations

import pytest

from edgekit.ui.lessons.compare_dashboard import closing


@pytest.fixture
def figures():
    """The stored run the issue quotes: int8 [-0.24, +0.01] and int4-g128 [-1.64, +1.11] hold zero."""
    def row(ci, kl, se, mb, ratio=None, coverage=None, contended=False):
        return {"delta_ci95": ci, "kl": kl, "kl_se": se, "mb": mb, "speed_ratio_ci95": ratio,
                "speed_coverage": coverage, "contended": contended}
    return {
        "base": "fp32", "ppl": 5.93, "windows": 7, "base_mb": 27.28,
        "rows": {"int8": row([-0.24, 0.01], 0.0004, 0.00003, 13.6, [0.4, 0.6], 0.95),
                 "nf4": row([0.3, 2.1], 0.009, 0.0005, 10.91, [1.1, 1.4], 0.95),
                 "int4-g128": row([-1.64, 1.11], 0.007, 0.0004, 10.91, [0.9, 1.2], 0.95, contended=True)},
        "samples": 14, "withheld": ["p95", "p99"],
        "gen_variant": "int4-g128", "same": 5, "gen_n": 24, "parting": (" the", " a"),
        "n_ray": 2, "n_store": 2,
        "sweep": {"default": {"ppl": 5.93, "rows": {"int4-g128": {"delta_ci95": [-1.64, 1.11], "kl": 0.007}}},
                  "smollm2-135m": {"ppl": 36.6, "rows": {"int4-g128": {"delta_ci95": [25.0, 36.0], "kl": 0.35}}}},
    }


def test_intervals_holding_zero_read_within_noise(figures):
    text = closing(figures)
    assert "`int8` [-0.24, +0.01]% and `int4-g128` [-1.64, +1.11]% within noise" in text
    assert "`nf4` [+0.30, +2.10]% worse than the baseline" in text
    assert "below zero by its own error bar" not in text
    figures["rows"]["int8"]["delta_ci95"] = [-0.5, -0.1]
    text = closing(figures)
    assert "`int8` [-0.50, -0.10]% below the baseline beyond its interval" in text


def test_the_fronts_follow_the_points(figures):
    text = closing(figures)
    assert "on KL against weight bytes: `fp32`, `int8` and `int4-g128` (`nf4` off it" in text
    figures["rows"]["nf4"]["kl"] = 0.005
    assert "on KL against weight bytes: `fp32`, `int8` and `nf4` (`int4-g128` off it" in closing(figures)


def test_speed_is_claimed_only_from_resolved_uncontended_ratios(figures):
    text = closing(figures)
    assert "`int8` slower; `nf4` faster; `int4-g128` not comparable: contended" in text
    figures["rows"]["int8"]["speed_ratio_ci95"] = [0.8, 1.3]
    figures["rows"]["nf4"]["speed_coverage"] = 0.5
    text = closing(figures)
    assert "`int8` no resolved difference" in text
    assert "`nf4` not resolved: too few repetitions for a 95% interval (its interval covers 50%)" in text


def test_closest_is_resolved_or_not(figures):
    assert "The lowest KL is `int8`'s (0.000400 ± 3.0e-05), resolved from the next" in closing(figures)
    figures["rows"]["int8"].update(kl=0.0069, kl_se=0.0004)
    assert "The lowest KL is `int8`'s (0.00690 ± 0.00040), not resolved from the next" in closing(figures)


def test_the_sweep_reads_each_models_rows(figures):
    text = closing(figures)
    assert "on `smollm2-135m` (perplexity 36.6): `int4-g128` Δppl [+25.00, +36.00]% (worse)" in text
    assert "on `default` (perplexity 5.93): `int4-g128` Δppl [-1.64, +1.11]% (within noise)" in text


def test_no_timing_no_speed_claim(figures):
    figures["samples"], figures["withheld"] = None, []
    for row in figures["rows"].values():
        row["speed_ratio_ci95"] = row["speed_coverage"] = None
        row["contended"] = False
    text = closing(figures)
    assert "**Speed** was not timed in this run" in text
    assert "faster" not in text and "slower" not in text


def test_an_empty_sweep_is_said(figures):
    assert "**The sweep** covered 2 models in 4 cells" in closing(figures)
    figures["sweep"], figures["n_ray"], figures["n_store"] = {}, 0, 0
    text = closing(figures)
    assert "**The sweep** returned no cells in this run" in text and "covered" not in text
