"""Notebook 12's closing: the random 7B is said, peaks and readings follow the figures."""
from __future__ import annotations

from edgekit.ui.lessons import a_7b_on_a_24gb_machine as lesson


def closing(figures: dict) -> str:
    return " ".join(lesson.closing(figures).split())


def run() -> dict:
    return {"record_model": "llama-2-7b-shaped random bf16 checkpoint", "device": "cpu-24gb", "budget_gib": 22.0,
            "fits": ["bf16", "int4-g128"], "old": {"int4-g128:low_memory=false": 25.8,
                                                   "gptq-int4-g128:low_memory=false": 28.9},
            "peaks": {"bf16": {"planned_gb": 14.11, "measured_gb": 14.0},
                      "ov-int8-g128": {"planned_gb": 14.94, "measured_gb": 15.15}},
            "missing": [], "load_s": {"bf16": 3.0, "gptq-int4-g128": 3515.0}, "score_s": {"bf16": 132.0, "x": 19.0},
            "ran": 8, "paths": 8, "source": "default",
            "readings": {"int4-g128": "within noise", "onnx-int8-g128": "within noise", "ov-int4-g128": "worse"}}


def test_random_weights_are_said():
    text = closing(run())
    assert "**The recorded 7B has random weights**" in text and "say nothing about a real 7B's quality" in text
    real = run()
    real["record_model"] = "meta-llama/Llama-2-7b-hf"
    assert "random weights" not in closing(real)


def test_peaks_against_plan_and_budget():
    text = closing(run())
    assert "highest peak was 15.2 GB (`ov-int8-g128`), under the 23.6 GB" in text
    assert "at most 1.01x the planned one (`ov-int8-g128`)" in text
    over = run()
    over["peaks"]["ov-int8-g128"].update(measured_gb=25.0)
    assert "over the 23.6 GB" in closing(over)
    held = run()
    held["peaks"]["ov-int8-g128"].update(measured_gb=14.0)
    assert "every measured peak stayed at or under its planned one" in closing(held)


def test_guard_and_readings():
    text = closing(run())
    assert "refuses `int4-g128` and `gptq-int4-g128` that way" in text
    assert "1 path worse, 2 paths within noise" in text
    better = run()
    better["readings"]["int4-g128"] = "better"
    assert "1 path worse, 1 path within noise, 1 path better" in closing(better)
