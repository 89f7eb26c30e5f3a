"""Notebook 10's closing: KL comparisons read intervals, each structured cut's speed its own ratio."""
from __future__ import annotations

from edgekit.ui.lessons import pruning


def closing(figures: dict) -> str:
    return " ".join(pruning.closing(figures).split())


def row(kl, half, mb, ratio=None, contended=False):
    return {"kl": kl, "kl_ci": [kl - half, kl + half], "mb": mb, "ratio_ci": ratio, "contended": contended}


def run() -> dict:
    return {"p": 50, "kv_mb": {"fp32": 6.29, "prune-heads-50%": 3.15}, "plan_error_pct": 0.0, "kl_per_minute": 0.0055,
            "rows": {"fp32": row(0.0, 0.0, 27.3, [1.0, 1.0]),
                     "prune-magnitude-50%": row(0.109, 0.01, 27.3, [0.9, 1.1]),
                     "prune-wanda-50%": row(0.089, 0.008, 27.3, [0.8, 1.2]),
                     "prune-wanda-2of4": row(0.227, 0.02, 27.3, [0.9, 1.1]),
                     "prune-mlp-25%": row(0.083, 0.008, 23.1, [0.7, 0.9]),
                     "prune-heads-50%": row(0.237, 0.02, 24.9, [0.95, 1.2]),
                     "prune-depth-33%": row(0.529, 0.03, 21.0, [1.1, 1.3]),
                     "int4-g64": row(0.008, 0.001, 11.1, [0.5, 0.7]),
                     "int3-g64": row(0.037, 0.003, 10.4, [0.5, 0.7]),
                     "prune-mlp-25%+int4-g64": row(0.089, 0.008, 10.6, [0.5, 0.7]),
                     "prune-mlp-25%+distill+int4-g64": row(0.081, 0.008, 10.6, [0.5, 0.7])}}


def test_wanda_against_magnitude_reads_their_intervals():
    text = closing(run())
    assert "Wanda's interval lies wholly below `prune-magnitude-50%`'s" in text
    tie = run()
    tie["rows"]["prune-wanda-50%"]["kl_ci"] = [0.08, 0.12]
    text_tie = closing(tie)
    assert "Wanda's interval overlaps `prune-magnitude-50%`'s: no resolved difference." in text_tie
    assert "Wanda keeps small weights" not in text_tie and "Wanda keeps small weights" in text
    assert "its interval lies wholly above `prune-wanda-50%`'s" in text          # 2:4


def test_each_structured_cut_reads_its_own_speed():
    text = closing(run())
    assert "`prune-mlp-25%` 23.1 MB at KL 0.0830, decoding slower (ratio [0.700, 0.900])" in text
    assert "`prune-heads-50%` 24.9 MB at KL 0.237, decoding no resolved difference" in text
    assert "`prune-depth-33%` 21.0 MB at KL 0.529, decoding faster" in text
    assert "faster everywhere" not in text
    turned = run()
    turned["rows"]["prune-mlp-25%"]["ratio_ci"] = [1.1, 1.2]
    turned["rows"]["prune-depth-33%"]["contended"] = True
    text = closing(turned)
    assert "`prune-mlp-25%` 23.1 MB at KL 0.0830, decoding faster" in text
    assert "decoding not comparable: contended" in text


def test_front_and_distillation_follow_the_figures():
    text = closing(run())
    assert "no pruned variant: on this model quantization alone" in text
    assert "interval overlaps `prune-mlp-25%+int4-g64`'s: no resolved difference" in text     # distilled
    better = run()
    better["rows"]["prune-mlp-25%+int4-g64"].update(kl=0.005, kl_ci=[0.004, 0.006], mb=10.0)
    better["rows"]["prune-mlp-25%+distill+int4-g64"].update(kl=0.003, kl_ci=[0.0025, 0.0035])
    text = closing(better)
    assert "pruning earns its place with `prune-mlp-25%+int4-g64`" in text
    assert "whose interval lies wholly below `prune-mlp-25%+int4-g64`'s" in text
