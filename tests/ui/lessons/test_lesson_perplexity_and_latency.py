"""Notebook 03's closing follows its figures: Δppl readings both sides, KL separation, speed from the protocol,
the mechanism from compute_path, grid alignment on the real model."""
from edgekit.ui.lessons.perplexity_and_latency import closing


def _row(ci, kl, se, size, ratio=None, contended=False, path=None, bound=None):
    return {"delta_ppl_pct_ci95": ci, "kl_divergence": kl, "kl_divergence_se": se, "weight_bytes": size,
            "speed_ratio_ci95": ratio, "contended": contended, "compute_path": path, "bound": bound}


ROWS = {"fp32": _row([0.0, 0.0], 0.0, 0.0, 27e6, [1.0, 1.0]),
        "int4-g32": _row([0.2, 0.9], 0.010, 0.001, 11.35e6, [1.3, 1.6], path="fused int4 kernel",
                         bound="memory-bound"),
        "int4-g128": _row([-0.4, 0.5], 0.020, 0.002, 10.9e6, [0.5, 0.7], path="fused int4 kernel"),
        "nf4": _row([-1.2, -0.3], 0.012, 0.001, 11.06e6, [0.9, 1.2], path="Linear4bit"),
        "fp4": _row([0.1, 0.4], 0.013, 0.001, 11.06e6, [0.1, 0.2], contended=True)}
REAL = {"fp32": {"delta_ppl_pct": 0.0, "delta_ppl_pct_ci95": [0.0, 0.0], "kl_divergence": 0.0},
        "int4-g32": {"delta_ppl_pct": 1.2, "delta_ppl_pct_ci95": [-0.5, 2.9], "kl_divergence": 0.01,
                     "grid_aligned": True},
        "nf4": {"delta_ppl_pct": 30.0, "delta_ppl_pct_ci95": [20.0, 40.0], "kl_divergence": 0.3}}
RUN = {"base": "fp32", "ppl": 54.4, "tokens": 4064, "windows": 32, "max_tokens": 4096, "rows": ROWS,
       "real_model": "smollm2-135m", "real_tokens": 512, "real": REAL}


def test_a_realistic_run():
    text = closing(RUN)
    assert "worse than `fp32`: `int4-g32` and `fp4`; within noise: `int4-g128`; better: `nf4`" in text
    assert "`int4-g32` drifts less, 4.5 standard errors apart" in text
    assert "not separated (0.7 standard errors apart" in text
    assert "faster: `int4-g32`; slower: `int4-g128`; no resolved difference: `nf4`; not comparable: contended: `fp4`" \
        in text
    assert "`int4-g32` fused int4 kernel (memory-bound)" in text
    assert "on the baseline's grid" in text and "Q4_1" in text and "weight-only" in text
    assert "`nf4` Δppl +30.0% [+20.0, +40.0] (worse)" in text
    assert "unpack" not in text and "information per bit" not in text


def test_opposite_data_changes_each_sentence():
    rows = {**ROWS, "int4-g32": _row([-0.9, -0.2], 0.019, 0.002, 11.35e6, [0.6, 0.8], path="unpacked per step"),
            "nf4": _row([0.3, 1.2], 0.030, 0.001, 11.06e6, [1.2, 1.4], path="Linear4bit"),
            "fp4": _row([0.1, 0.4], 0.013, 0.001, 11.06e6, [0.9, 1.1])}
    real = {**REAL, "int4-g32": {**REAL["int4-g32"], "grid_aligned": False, "delta_ppl_pct_ci95": [0.5, 2.9]}}
    text = closing(RUN | {"rows": rows, "real": real})
    assert "worse than `fp32`: `nf4` and `fp4`; within noise: `int4-g128`; better: `int4-g32`" in text
    assert "not separated (0.4 standard errors apart" in text
    assert "`fp4` drifts less" in text
    assert "slower: `int4-g32` and `int4-g128`; faster: `nf4`; no resolved difference: `fp4`" in text
    assert "`int4-g32` unpacked per step" in text
    assert "on the baseline's grid" not in text and "`int4-g32` Δppl +1.2% [+0.5, +2.9] (worse)" in text


def test_no_speed_claim_without_the_protocol():
    rows = {v: {**m, "speed_ratio_ci95": None} for v, m in ROWS.items()}
    text = closing(RUN | {"rows": rows})
    assert "claims nothing about speed" in text and "faster" not in text and "slower" not in text
