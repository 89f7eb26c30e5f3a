"""Notebook 09's closing: KL order, speed, the thread sweep and the decision follow the figures fed to it."""
from __future__ import annotations

from edgekit.ui.lessons import choosing_a_runtime


def closing(figures: dict) -> str:
    return " ".join(choosing_a_runtime.closing(figures).split())


def row(kl, kl_ci, delta_ci, ratio_ci, contended=False, size=5e6):
    return {"kl": kl, "kl_ci": kl_ci, "top1": 0.95, "delta_ci": delta_ci, "weight_bytes": size, "ratio_ci": ratio_ci,
            "contended": contended}


def run() -> dict:
    return {"baseline": "fp32",
            "rows": {"onnx-int8": row(0.003, [0.0028, 0.0034], [0.26, 0.99], [8.0, 10.0], size=6.9e6),
                     "gguf-q4_0": row(0.011, [0.010, 0.012], [-0.5, 1.1], [0.8, 1.3], size=4.1e6),
                     "ov-int4-g32": row(0.008, [0.007, 0.009], [-0.9, 0.8], [4.0, 6.0], size=4.8e6)},
            "head": {"nbits": 43, "head": "`/lm_head/MatMul_Q4`", "onnx_bytes": 7.9e6, "pt_bytes": 11.35e6},
            "threads": {"gguf-q4_0": {"ratio_ci": [0.4, 0.7], "contended": False},
                        "ov-int4-g32": {"ratio_ci": [0.9, 1.4], "contended": False}},
            "decision": {"device": "raspberry-pi-5-8gb", "max_kl": 0.02, "min_tps": 200.0,
                         "recommended": ("onnx-int8", "onnxruntime", 6.9e6), "closest": None, "failed": 2,
                         "candidates": 3}}


def test_kl_order_and_its_intervals():
    text = closing(run())
    assert "`onnx-int8` has the lowest KL" in text and "`gguf-q4_0` the highest" in text
    assert "the highest's interval lies wholly above the lowest's" in text
    assert "1 variant worse, 2 variants within noise" in text
    close = run()
    close["rows"]["gguf-q4_0"]["kl_ci"] = [0.002, 0.02]
    assert "the highest's interval overlaps the lowest's" in closing(close)


def test_speed_reads_each_ratio_and_keeps_contended_rows_out():
    text = closing(run())
    assert "`gguf-q4_0`: no resolved difference" in text and "`onnx-int8` and `ov-int4-g32`: faster" in text
    contended = run()
    contended["rows"]["onnx-int8"]["contended"] = True
    assert "`onnx-int8`: not comparable: contended" in closing(contended)


def test_thread_sentence_follows_the_sweep():
    text = closing(run())
    assert "`gguf-q4_0` with a second thread: slower" in text
    assert "`ov-int4-g32` with a second thread: no resolved difference" in text
    faster = run()
    faster["threads"]["gguf-q4_0"]["ratio_ci"] = [1.3, 1.8]
    assert "`gguf-q4_0` with a second thread: faster" in closing(faster)
    faster["threads"]["gguf-q4_0"]["contended"] = True
    assert "`gguf-q4_0` with a second thread: not comparable: contended" in closing(faster)
    assert "how little a second thread buys" not in text


def test_decision_and_the_smollm2_caveat():
    text = closing(run())
    assert "the decision is `onnx-int8` on onnxruntime (6.90 MB" in text
    assert "`onnx-int8` wins here on the toy model" in text and "+83.6% perplexity" in text
    nothing = run()
    nothing["decision"].update(recommended=None, closest=("onnx-int8", "39 tokens/s < 200"))
    text = closing(nothing)
    assert "nothing qualifies; `onnx-int8` comes closest (39 tokens/s < 200)" in text
    assert "`onnx-int8` was measured here" in text
    del nothing["rows"]["onnx-int8"]
    nothing["decision"]["closest"] = ("gguf-q4_0", "x")
    assert "+83.6%" not in closing(nothing)
