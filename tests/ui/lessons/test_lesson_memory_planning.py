"""Notebook 02's closing follows its figures: what fits, the guard, and the 7B record against the planner."""
from edgekit.ui.lessons.memory_planning import closing

GB = 2**30
SEVEN_B = [{"variant": "bf16", "fits": True, "planned_peak_bytes": 13.6e9, "measured_peak_bytes": 13.8e9},
           {"variant": "int4-g128", "fits": True, "planned_peak_bytes": 5.2e9, "measured_peak_bytes": 5.1e9}]
RUN = {"gqa": ["llama-3-8b", "mistral-7b"], "big_vocab": "qwen2.5-7b", "vocab": 152_064, "embed_b": 1.09,
       "device": "laptop-16gb", "budget_gib": 12.0, "plan_model": "llama-2-7b", "context": 4096,
       "fit": ["nf4", "int4-g128"], "no_fit": ["fp32", "fp16"], "fp32_compute": ["fp32", "int4-g128"],
       "kv_wide_gib": 4.0, "kv_narrow_gib": 2.0, "fp16_total_gib": 17.01, "fp16_fits": False, "n_host": 20,
       "n_disk": 15, "variant": "nf4", "fits_on": 5, "n_devices": 7,
       "npu": {"fits": False, "total_gib": 4.1, "budget_gib": 8.0}, "model": "default", "n_checked": 4,
       "worst": 0.0001, "refusal": "refusing to load default as fp32", "same_logits": True,
       "seven_b_device": "cpu-24gb", "seven_b": SEVEN_B}


def test_the_planner_admits_int4_g128_for_a_7b():
    text = closing(RUN)
    assert "the planner admits `bf16` and `int4-g128`" in text and "refuses none of them" in text
    assert "within the planned peak: `int4-g128`;" in " ".join(text.split())
    assert "`bf16` (12.85 GiB against 12.67 GiB planned)" in text
    assert "random weights" in text
    assert "refused the load" in text and "does not fit (17.01 GiB)" in text
    assert "refuses it although" in text


def test_opposite_verdicts_change_the_sentences():
    rows = [{**SEVEN_B[0], "measured_peak_bytes": 13.0e9}, {**SEVEN_B[1], "fits": False}]
    text = closing(RUN | {"seven_b": rows, "refusal": None, "fp16_fits": True, "same_logits": False,
                          "npu": {"fits": True, "total_gib": 4.1, "budget_gib": 8.0}})
    assert "admits `bf16` and refuses `int4-g128`" in " ".join(text.split())
    assert "above it: none" in text
    assert "did NOT refuse" in text and "`fp16` fits (17.01 GiB)" in text and "different logits" in text
    assert "the NPU profile admits it" in text
