"""Notebook 11's closing: the KL comparison reads both intervals, each cache's speed its paired ratio."""
from __future__ import annotations

from edgekit.ui.lessons import kv_cache


def closing(figures: dict) -> str:
    return " ".join(kv_cache.closing(figures).split())


def run() -> dict:
    return {"transformers_backend": False, "worst_mib": 0.006, "prompt": 960,
            "plan": {"model": "llama-2-7b", "variant": "gguf-q4_0", "mid": 32768, "weights_gib": 3.88,
                     "kv_gib": {"f16": 16.0, "q8_0": 8.5, "q4_0": 4.5}, "fit_context": 8192,
                     "fit_device": "laptop-16gb",
                     "fits": {"f16": False, "q8_0": False, "q4_0": True},
                     "total_gib": {"f16": 14.3, "q8_0": 12.4, "q4_0": 11.4}, "budget_gib": 12.0},
            "rows": {"q8_0": {"kl": 0.00022, "kl_ci": [0.0002, 0.00024], "top1": 0.988, "ratio_ci": [0.2, 0.3],
                              "contended": False},
                     "q4_0": {"kl": 0.00627, "kl_ci": [0.005, 0.00757], "top1": 0.933, "ratio_ci": [0.1, 0.2],
                              "contended": False}}}


def test_kl_comparison_turns_with_the_intervals():
    assert "Fewer bits cost more here: `q4_0`'s KL interval lies wholly above `q8_0`'s" in closing(run())
    overlap = run()
    overlap["rows"]["q4_0"]["kl_ci"] = [0.0001, 0.01]
    assert "The two KL intervals overlap" in closing(overlap)


def test_speed_reads_each_cache_and_explains_only_what_happened():
    text = closing(run())
    assert "`q8_0` slower (ratio [0.200, 0.300]); `q4_0` slower" in text
    assert "`q8_0` and `q4_0` decoded slower: a quantized cache is not free" in text
    mixed = run()
    mixed["rows"]["q8_0"]["ratio_ci"] = [0.9, 1.1]
    mixed["rows"]["q4_0"]["ratio_ci"] = [1.1, 1.3]
    text = closing(mixed)
    assert "`q8_0` no resolved difference" in text and "`q4_0` decoded faster" in text
    assert "not free" not in text
    contended = run()
    contended["rows"]["q4_0"]["contended"] = True
    assert "`q4_0` not comparable: contended" in closing(contended)


def test_plan_fits_follow_the_plans():
    text = closing(run())
    assert "does not fit with an f16 cache (14.3 GiB) and fits with `q4_0`" in text
    roomy = run()
    roomy["plan"]["fits"]["f16"] = True
    assert "fits with an f16 cache" in closing(roomy)
