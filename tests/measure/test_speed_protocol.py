"""The speed protocol: interval coverage on simulated repetitions, percentiles withheld below their minimum,
interleaved rounds through a real Runner."""
import numpy as np
import pytest
import torch

from edgekit.core.errors import InputError
from edgekit.measure.speed import (
    P95_MIN_SAMPLES,
    P99_MIN_SAMPLES,
    Repetition,
    measure_speed,
    median_interval,
    paired_ratios,
    percentile_figures,
    speed_figures,
)

SIMULATIONS = 3000


def _rounds(rng, n, rates, drift_sd=0.15, noise_sd=0.05, trend=0.0):
    """``n`` rounds of every variant: a drift shared by the round (random, plus a linear ``trend``), noise per run."""
    reps = {name: [] for name in rates}
    for r in range(n):
        drift = np.exp(rng.normal(0, drift_sd) + trend * r)
        for name, rate in rates.items():
            reps[name].append(Repetition(name, r, 0, 10.0, rate * drift * np.exp(rng.normal(0, noise_sd)), [1.0]))
    return reps


@pytest.mark.parametrize("n", [5, 12])
def test_median_and_paired_ratio_intervals_cover_95_percent_under_drift_and_noise(n):
    """Random drift shared by each round, lognormal noise per run: the median's interval covers the true median
    rate, the paired ratio's interval the true ratio, 92-98% of the time (5 repetitions: 93.75% by construction)."""
    rng = np.random.default_rng(0)
    covered_rate = covered_ratio = 0
    for _ in range(SIMULATIONS):
        reps = _rounds(rng, n, {"base": 100.0, "int4": 230.0})
        _, lo, hi, _ = median_interval([r.decode_tokens_per_s for r in reps["int4"]])
        covered_rate += lo <= 230.0 <= hi
        _, lo, hi, _ = median_interval(paired_ratios(reps["int4"], reps["base"]))
        covered_ratio += lo <= 2.3 <= hi
    assert 0.92 <= covered_rate / SIMULATIONS <= 0.98
    assert 0.92 <= covered_ratio / SIMULATIONS <= 0.98


def test_pairing_by_round_cancels_a_trend_that_back_to_back_repetitions_do_not():
    """A machine slowing down through the run, two variants of equal speed: timed back to back (the variant's ten
    runs after the baseline's) the trend reads as a slowdown; in rounds with a shuffled order it cancels."""
    rng = np.random.default_rng(1)
    n, trials, paired, sequential = 10, 500, 0, 0
    for _ in range(trials):
        slot = lambda i: 100.0 * np.exp(-0.01 * i + rng.normal(0, 0.03))  # noqa: E731
        rounds = [rng.permutation(2) for _ in range(n)]
        base = [Repetition("base", r, 0, 1.0, slot(2 * r + order[0]), [1.0]) for r, order in enumerate(rounds)]
        int4 = [Repetition("int4", r, 0, 1.0, slot(2 * r + order[1]), [1.0]) for r, order in enumerate(rounds)]
        _, lo, hi, _ = median_interval(paired_ratios(int4, base))
        paired += lo <= 1.0 <= hi
        base = [Repetition("base", r, 0, 1.0, slot(r), [1.0]) for r in range(n)]
        int4 = [Repetition("int4", r, 0, 1.0, slot(n + r), [1.0]) for r in range(n)]
        _, lo, hi, _ = median_interval(paired_ratios(int4, base))
        sequential += lo <= 1.0 <= hi
    assert paired / trials >= 0.92 and sequential / trials < 0.2


def test_median_interval_small_samples():
    median, lo, hi, coverage = median_interval([3.0, 1.0, 2.0, 5.0, 4.0])
    assert (median, lo, hi) == (3.0, 1.0, 5.0) and coverage == pytest.approx(1 - 2 / 32)
    assert median_interval([2.0])[1:] == (None, None, None)
    with pytest.raises(InputError):
        median_interval([])


def _reps(count, gaps_each):
    rng = np.random.default_rng(2)
    return [Repetition("v", r, 0, 5.0, 100.0, list(rng.gamma(4.0, 2.0, gaps_each))) for r in range(count)]


def test_p99_withheld_below_its_minimum_and_p95_below_its_own():
    few = percentile_figures(_reps(5, 15))          # 75 gaps: P95 yes, P99 no
    assert few["latency_samples"] == 75 < P99_MIN_SAMPLES
    assert few["latency_ms_p99"] is None and few["latency_ms_p99_ci95"] is None and "p99" in few["latency_indicative"]
    lo, hi = few["latency_ms_p95_ci95"]
    assert lo <= few["latency_ms_p95"] <= hi and few["latency_ms_p50"] <= few["latency_ms_p95"]
    enough = percentile_figures(_reps(7, 15))       # 105 gaps
    assert enough["latency_ms_p99"] is not None and enough["latency_indicative"] == []
    lo, hi = enough["latency_ms_p99_ci95"]
    assert lo <= enough["latency_ms_p99"] <= hi
    tiny = percentile_figures(_reps(2, P95_MIN_SAMPLES // 2 - 1))
    assert tiny["latency_ms_p95"] is None and tiny["latency_indicative"] == ["p95", "p99"]


def test_figures_flag_a_variant_contended_beyond_its_share():
    reps = _reps(5, 3)
    for r in reps[:2]:
        r.contended = True
    for r in reps[2:]:
        r.contended = False
    figures = speed_figures(reps, reps)
    assert figures["contended"] and figures["contended_repetitions"] == 2 and figures["repetitions"] == 5
    assert figures["speed_ratio"] == 1.0 and figures["decode_tokens_per_s_ci95"] == [100.0, 100.0]
    reps[0].contended = False
    assert not speed_figures(reps)["contended"]
    for r in reps:
        r.contended = None
    assert speed_figures(reps)["contended"] is None


class CountingRunner:
    """A bigram table decoded greedily; records the order its generations ran in."""

    def __init__(self, name, log):
        self.name, self.tokenizer, self.log = name, None, log
        self.table = torch.randn(32, 32, generator=torch.Generator().manual_seed(0))

    def generate_stream(self, input_ids, max_new_tokens):
        self.log.append(self.name)
        token = int(input_ids[0, -1])
        for _ in range(max_new_tokens):
            token = int(self.table[token].argmax())
            yield token

    def weight_bytes(self):
        return self.table.numel() * 4


def test_measure_speed_interleaves_shuffled_seeded_rounds():
    log = []
    runners = {n: CountingRunner(n, log) for n in ("fp32", "int8", "int4")}
    reps = measure_speed(runners, torch.tensor([1, 2, 3]), new_tokens=4, repetitions=6, warmup=1, seed=3,
                         progress=False)
    assert log[:3] == ["fp32", "int8", "int4"]                      # one warm-up each, untimed
    rounds = [log[3 + 3 * r: 6 + 3 * r] for r in range(6)]
    assert all(sorted(r) == ["fp32", "int4", "int8"] for r in rounds)  # every variant once a round
    assert len({tuple(r) for r in rounds}) > 1                          # in an order shuffled per round
    for name, mine in reps.items():
        assert [r.round for r in mine] == list(range(6)) and all(len(r.gaps_ms) == 3 for r in mine)
        assert [rounds[r.round][r.order] for r in mine] == [name] * 6
        assert all(r.contended is not None and "others_cores" in r.contention for r in mine)
    log.clear()
    again = measure_speed({n: CountingRunner(n, log) for n in ("fp32", "int8", "int4")}, torch.tensor([1, 2, 3]),
                          new_tokens=4, repetitions=6, warmup=1, seed=3, progress=False)
    assert [r.order for r in again["int8"]] == [r.order for r in reps["int8"]]   # the seed fixes the order
    with pytest.raises(InputError):
        measure_speed(runners, torch.tensor([1]), new_tokens=1, progress=False)
