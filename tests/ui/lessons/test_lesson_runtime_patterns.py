"""Notebook 08's closing: each comparison follows the intervals it is fed, and turns with them."""
from __future__ import annotations

import copy

from edgekit.ui.lessons import runtime_patterns
from edgekit.ui.narrate import apart


def closing(figures: dict) -> str:
    """The closing with its line breaks read as spaces."""
    return " ".join(runtime_patterns.closing(figures).split())


def run() -> dict:
    """Figures shaped like a real run of the notebook on the default model."""
    return {
        "onnx": {"n": 5, "best": "intra_op_threads=2,io_binding=False", "default": "default",
                 "best_rate": [600.0, 700.0], "default_rate": [60.0, 80.0], "ratio": [8.0, 11.0], "contended": False,
                 "written": "intra_op_threads=2, io_binding=False"},
        "torch": {"n": 2, "best": "threads=1", "default": "threads=2", "best_rate": [20.0, 30.0],
                  "default_rate": [18.0, 26.0], "ratio": [0.9, 1.4], "contended": False},
        "batch": {"new_tokens": 12, "sizes": [{"batch_size": 1, "latency_ci": [250.0, 280.0]},
                                              {"batch_size": 8, "latency_ci": [500.0, 560.0]}],
                  "target_ms": 840.0, "target_basis": "median upper bound", "max_wait_ms": 5, "cap": 8, "rate": 5.9,
                  "requests": 60, "alone": {"missed": 39, "p95": 3570.0},
                  "batched": {"missed": 0, "p95": 560.0, "mean_batch": 1.67}},
        "streaming": {"layers_streamed": 6, "layers": 6, "same": True, "stall_off": 0.67, "stall_on": 0.33,
                      "rate_off": [14.0, 13.5, 14.8, 14.2, 13.9], "rate_on": [18.0, 17.5, 18.9, 18.2, 17.7]},
        "serving": {"pieces": 13, "add_up": True, "refused_status": 400, "target_ms": 872.0,
                    "target_basis": "median upper bound", "single_rate": 4.1, "sustained": 16.2,
                    "first_missed": None, "rejected": 0, "timed_out": 0},
    }


def test_intervals_apart_or_overlapping():
    assert apart([3, 4], [1, 2]) == 1 and apart([1, 2], [3, 4]) == -1 and apart([1, 3], [2, 4]) == 0
    assert apart(None, [1, 2]) == 0


def test_tuning_names_a_winner_only_above_the_default():
    text = closing(run())
    assert "lies wholly above the default's, so it is the winner, and the manifest now holds" in text
    assert "ratio [8.00, 11.0]: faster" in text
    assert "the two decode intervals overlap, so it is no winner" in text        # the torch sweep
    tie = run()
    tie["onnx"].update(best_rate=[60.0, 90.0], ratio=[0.9, 1.3])
    text = closing(tie)
    assert "so it is the winner" not in text and "no resolved difference" in text
    contended = run()
    contended["onnx"]["contended"] = True
    text = closing(contended)
    assert "ran contended, so it is named no winner" in text and "not comparable: contended" in text


def test_batching_throughput_and_misses_follow_the_figures():
    text = closing(run())
    assert "shows more throughput than batch 1" in text
    assert "missed the target for 39 of 60" in text and "did not keep nine in ten" in text
    assert "missed it for 0 (P95 560 ms) and kept nine in ten" in text
    flat = run()
    flat["batch"]["sizes"][1]["latency_ci"] = [1800.0, 2400.0]      # 8x the tokens in 8x the time: no gain
    assert "no resolved difference in throughput" in closing(flat)
    worse = copy.deepcopy(flat)
    worse["batch"]["sizes"][1]["latency_ci"] = [4000.0, 5000.0]
    assert "shows less throughput" in closing(worse)


def test_prefetch_reading_turns_with_its_ratio():
    assert "decoding was faster with prefetch" in closing(run())
    slower = run()
    slower["streaming"]["rate_on"] = [11.0, 10.5, 11.8, 11.2, 10.9]
    assert "decoding was slower with prefetch" in closing(slower)
    tie = run()
    tie["streaming"]["rate_on"] = [15.0, 12.5, 13.8, 14.2, 14.9]
    assert "decoding was neither faster nor slower with prefetch (no resolved difference)" in closing(tie)


def test_serving_knee():
    assert "up to 16.2 req/s (3.95x the single stream); no rate tried missed it" in closing(run())
    missed = run()
    missed["serving"].update(sustained=None, first_missed=2.0)
    text = closing(missed)
    assert "no rate tried stayed within 872 ms" in text and "the first rate that missed was 2.00 req/s" in text
