"""Paired task statistics against hand computations: flips, McNemar's exact p, the paired bootstrap,
the prompt fingerprint and the refusal to pair rows whose prompts differ."""
import math

import numpy as np
import pytest

from edgekit.core.errors import EdgekitError
from edgekit.measure.paired import TaskAnswers, kl_flip_relation, mcnemar_exact_p, paired_accuracy, prompt_fingerprint

FP = prompt_fingerprint({(0, 0): [1, 2, 3]})


def answers(bits: str, fingerprint: str = FP) -> TaskAnswers:
    return TaskAnswers("t", tuple(range(len(bits))), tuple(c == "1" for c in bits), fingerprint)


def test_mcnemar_exact_p_by_hand():
    # 1 flip one way, 6 the other: n = 7, two-sided p = 2 * (C(7,0) + C(7,1)) / 2^7 = 16/128
    assert mcnemar_exact_p(1, 6) == pytest.approx(16 / 128)
    assert mcnemar_exact_p(6, 1) == pytest.approx(16 / 128)
    # 0 against 5: 2 / 32
    assert mcnemar_exact_p(0, 5) == pytest.approx(2 / 32)
    # balanced flips and no flips: nothing leans either way
    assert mcnemar_exact_p(3, 3) == 1.0
    assert mcnemar_exact_p(0, 0) == 1.0
    # 2 against 10: 2 * sum_{k<=2} C(12,k) / 2^12
    assert mcnemar_exact_p(2, 10) == pytest.approx(2 * (1 + 12 + 66) / 4096)


def test_flips_and_delta_by_hand():
    base = answers("1111100000")
    variant = answers("1110000011")  # items 3, 4 right -> wrong; items 8, 9 wrong -> right
    out = paired_accuracy(base, variant)
    assert out["flips_right_to_wrong"] == 2 and out["flips_wrong_to_right"] == 2
    assert out["task_accuracy"] == pytest.approx(0.5)
    assert out["task_accuracy_delta"] == pytest.approx(0.0)
    assert out["mcnemar_p"] == 1.0
    assert out["task_items"] == 10 and out["prompt_fingerprint"] == FP


def test_paired_bootstrap_is_the_hand_resampling_of_item_differences():
    base = answers("11111111110000000000" * 3)
    variant = answers("10111011110000100001" * 3)
    out = paired_accuracy(base, variant, resamples=500, seed=7)
    diff = np.array(variant.correct, float) - np.array(base.correct, float)
    picks = np.random.default_rng(7).integers(0, len(diff), (500, len(diff)))  # items resampled together
    means = diff[picks].mean(1)
    low, high = np.quantile(means, [0.025, 0.975])
    assert out["task_accuracy_delta"] == pytest.approx(0.0)  # 6 flips each way
    assert out["task_accuracy_delta_ci95"] == pytest.approx([low, high])
    assert low < 0 < high


def test_a_clear_loss_has_an_interval_below_zero():
    base = answers("1" * 40 + "0" * 10)
    variant = answers("0" * 20 + "1" * 20 + "0" * 10)
    out = paired_accuracy(base, variant)
    assert out["task_accuracy_delta"] == pytest.approx(-0.4)
    assert out["task_accuracy_delta_ci95"][1] < 0
    assert out["mcnemar_p"] == pytest.approx(2 * 0.5 ** 20)


def test_the_baseline_against_itself():
    base = answers("1011")
    out = paired_accuracy(base, base)
    assert out["task_accuracy_delta_ci95"] == [0.0, 0.0] and out["mcnemar_p"] == 1.0


def test_fingerprint_sees_every_token_and_ignores_dict_order():
    a = prompt_fingerprint({(0, 0): [1, 2], (1, 0): [3]})
    assert a == prompt_fingerprint({(1, 0): [3], (0, 0): [1, 2]})
    assert a != prompt_fingerprint({(0, 0): [0, 1, 2], (1, 0): [3]})  # a BOS more
    assert a != prompt_fingerprint({(0, 0): [1, 2], (1, 1): [3]})


def test_fingerprint_mismatch_is_refused_in_one_line():
    other = prompt_fingerprint({(0, 0): [0, 1, 2, 3]})
    with pytest.raises(EdgekitError, match="token ids differ") as info:
        paired_accuracy(answers("1010"), answers("1010", other))
    assert "\n" not in str(info.value)


def test_different_items_are_refused():
    with pytest.raises(EdgekitError, match="--limit"):
        paired_accuracy(answers("1010"), answers("10100"))


def test_kl_against_flip_rate():
    out = kl_flip_relation([(0.01, 0.02), (0.05, 0.04), (0.2, 0.1), (0.5, 0.3)])
    assert out["rows"] == 4 and out["spearman"] == pytest.approx(1.0)
    assert kl_flip_relation([(0.01, 0.02), (0.05, 0.04)])["spearman"] is None
    assert kl_flip_relation([(0.1, math.nan), (0.2, 0.1), (0.3, 0.2)])["rows"] == 2
