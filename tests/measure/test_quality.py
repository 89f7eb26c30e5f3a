"""edgekit.measure.quality: each metric against a hand-computed case.

The runner here is a fixed bigram table (logits of a position depend only on its token),
so every figure can be computed independently in a few lines: the thing under test is the
metric, not a model.
"""
import math
import time

import numpy as np
import pytest
import torch
from hf_guide import hf_guide_perplexity
from scipy.signal import lfilter
from torch.nn import functional as F

from edgekit.core.errors import InputError
from edgekit.measure.latency import device_bandwidth, measure_latency, percentiles_indicative
from edgekit.measure.quality import EvalSettings, paired_difference, score, scored_positions, sliding_windows
from edgekit.measure.stats import (
    Z95,
    block_bootstrap_interval,
    block_length,
    delta_reading,
    ratio_interval,
    ratio_stat,
    t_quantile,
)

VOCAB = 11


class BigramRunner:
    """Logits of each position = table[token]; greedy generation follows the table's argmax."""

    def __init__(self, table: torch.Tensor, name: str = "bigram", tokens: int | None = None) -> None:
        self.name, self.table, self.tokenizer, self._tokens = name, table, None, tokens

    def logits(self, input_ids):
        return self.table[input_ids].float()

    def generate_stream(self, input_ids, max_new_tokens):
        token = int(input_ids[0, -1])
        for _ in range(self._tokens if self._tokens is not None else max_new_tokens):
            token = int(self.table[token].argmax())
            yield token

    def weight_bytes(self):
        return self.table.numel() * 4

    def close(self):
        pass


@pytest.fixture
def table():
    return torch.randn(VOCAB, VOCAB, generator=torch.Generator().manual_seed(0)) * 2


@pytest.fixture
def ids():
    return torch.randint(0, VOCAB, (203,), generator=torch.Generator().manual_seed(1))


def guide_perplexity(runner, ids, context, stride):
    """The guide's loop on the runner's logits, with the guide's cross-entropy."""
    def window_loss(input_ids, target_ids):
        logits = runner.logits(input_ids)
        return F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), target_ids[:, 1:].reshape(-1), ignore_index=-100)

    return hf_guide_perplexity(ids, context, stride, window_loss)


def test_windows_match_the_guide():
    windows = sliding_windows(10, context=4, stride=2)
    assert [(w.begin, w.end, w.target_len) for w in windows] == [(0, 4, 4), (2, 6, 2), (4, 8, 2), (6, 10, 2)]
    assert scored_positions(windows[0]).tolist() == [0, 1, 2]  # position t predicts token t+1
    assert scored_positions(windows[1]).tolist() == [1, 2]


@pytest.mark.parametrize("n,context,stride", [(10, 4, 2), (203, 32, 16), (203, 32, 31), (203, 50, 7), (5, 64, 32)])
def test_every_token_but_the_first_is_scored_once(n, context, stride):
    targets = [w.begin + p + 1 for w in sliding_windows(n, context, stride) for p in scored_positions(w)]
    assert sorted(targets) == list(range(1, n))


def test_stride_equal_to_context_leaves_each_window_start_unscored():
    # the guide's disjoint windows: the first token of each window has no history to be predicted from
    targets = [w.begin + p + 1 for w in sliding_windows(100, 32, 32) for p in scored_positions(w)]
    assert sorted(targets) == [t for t in range(100) if t % 32]


@pytest.mark.parametrize("context,stride,batch", [(32, 16, 4), (32, 32, 1), (50, 7, 3), (64, 64, 8)])
def test_perplexity_equals_the_guide_loop(table, ids, context, stride, batch):
    runner = BigramRunner(table)
    result = score(runner, ids, EvalSettings(context, stride, None, batch), progress=False).perplexity()
    expected, n_tokens = guide_perplexity(runner, ids, context, stride)
    assert result["scored_tokens"] == n_tokens
    assert result["perplexity"] == pytest.approx(expected, rel=1e-6)


def test_uniform_model_has_perplexity_equal_to_vocabulary(ids):
    result = score(BigramRunner(torch.zeros(VOCAB, VOCAB)), ids, EvalSettings(32, 16, None), progress=False)
    assert result.perplexity()["perplexity"] == pytest.approx(VOCAB, rel=1e-6)
    assert result.perplexity()["log_ppl_se"] == pytest.approx(0, abs=1e-6)  # every token costs log V


def test_bigram_perplexity_by_hand(table, ids):
    logp = torch.log_softmax(table.double(), -1)
    by_hand = math.exp(-float(sum(logp[ids[t - 1], ids[t]] for t in range(1, len(ids)))) / (len(ids) - 1))
    result = score(BigramRunner(table), ids, EvalSettings(40, 20, None), progress=False).perplexity()
    assert result["perplexity"] == pytest.approx(by_hand, rel=1e-5)  # float32 logits against a float64 sum
    lo, hi = result["perplexity_ci95"]
    assert lo < result["perplexity"] < hi


def test_max_tokens_truncates(table, ids):
    scores = score(BigramRunner(table), ids, EvalSettings(32, 16, 100), progress=False)
    assert scores.tokens == 100 and scores.scored_tokens == 99


def test_ratio_standard_errors_by_hand():
    assert ratio_stat([2, 4, 6], [1, 2, 3]) == (2.0, 0.0)
    mean, se = ratio_stat([1, 3], [1, 1])  # equal weights: the standard error of the mean
    assert (mean, se) == (2.0, pytest.approx(np.std([1, 3], ddof=1) / math.sqrt(2)))
    mean, se = ratio_stat([1, 4], [1, 3])  # residuals -0.25, +0.25: sqrt(2/1 * 0.125) / 4
    assert (mean, se) == (1.25, pytest.approx(0.125))
    assert math.isnan(ratio_stat([1], [2])[1])


def test_identical_model_has_zero_kl_full_agreement_and_zero_delta(table, ids):
    settings = EvalSettings(32, 16, None)
    base = score(BigramRunner(table), ids, settings, keep_logprobs=True, progress=False)
    same = score(BigramRunner(table), ids, settings, baseline=base, progress=False).against(base)
    assert same["kl_divergence"] == pytest.approx(0, abs=1e-9)
    assert same["top1_agreement"] == 1.0
    assert same["delta_ppl_pct"] == pytest.approx(0, abs=1e-9)
    assert same["delta_ppl_pct_ci95"] == [pytest.approx(0, abs=1e-9)] * 2


def test_kl_and_top1_by_hand(table, ids):
    other = table.clone()
    other[:, 0] += 3.0  # token 0 becomes likelier everywhere: changes some argmaxes
    settings = EvalSettings(32, 16, None, 2)
    base = score(BigramRunner(table), ids, settings, keep_logprobs=True, progress=False)
    result = score(BigramRunner(other), ids, settings, baseline=base, progress=False).against(base)
    p, q = torch.log_softmax(table, -1), torch.log_softmax(other, -1)
    prev = ids[:-1]  # every position but the last predicts a scored token
    kl = float((p[prev].exp() * (p[prev] - q[prev])).sum(-1).mean())
    agree = float((p[prev].argmax(-1) == q[prev].argmax(-1)).float().mean())
    assert result["kl_divergence"] == pytest.approx(kl, rel=1e-5)
    assert result["top1_agreement"] == pytest.approx(agree)
    assert 0 < agree < 1 and result["kl_divergence_se"] > 0 and result["top1_agreement_se"] > 0
    ppl_b, ppl_v = base.perplexity()["perplexity"], math.exp(-float(q[prev].gather(1, ids[1:, None]).mean()))
    assert result["delta_ppl_pct"] == pytest.approx(100 * (ppl_v / ppl_b - 1), rel=1e-5)


def test_baseline_on_other_tokens_is_refused(table, ids):
    base = score(BigramRunner(table), ids, EvalSettings(32, 16, None), keep_logprobs=True, progress=False)
    with pytest.raises(InputError, match="same text"):
        score(BigramRunner(table), ids, EvalSettings(32, 16, 100), baseline=base, progress=False)


def test_bad_settings_and_short_text():
    with pytest.raises(InputError, match="stride"):
        EvalSettings(32, 64)
    with pytest.raises(InputError, match="at least 2"):
        EvalSettings(1, 1)
    with pytest.raises(InputError, match="longer text"):
        sliding_windows(1, 32, 16)


def test_latency_keys_and_order(table):
    stats = measure_latency(BigramRunner(table), torch.tensor([1, 2, 3]), new_tokens=8, runs=3, progress=False)
    assert set(stats) >= {"ttft_ms", "decode_tokens_per_s", "latency_ms_p50", "latency_ms_p95", "latency_ms_p99"}
    assert stats["ttft_ms"] >= 0 and stats["decode_tokens_per_s"] > 0
    assert stats["latency_ms_p50"] <= stats["latency_ms_p95"] <= stats["latency_ms_p99"]
    assert (stats["prompt_tokens"], stats["new_tokens"], stats["latency_runs"]) == (3, 8, 3)


def test_latency_refuses_bad_input(table):
    with pytest.raises(InputError, match="at least 2"):
        measure_latency(BigramRunner(table), torch.tensor([1]), new_tokens=1, progress=False)
    with pytest.raises(InputError, match="instead of 8"):
        measure_latency(BigramRunner(table, tokens=5), torch.tensor([1]), new_tokens=8, progress=False)


class WarmingRunner(BigramRunner):
    """Each token of the process comes slower the earlier it is (2 ms + 30 ms x 0.85^i), as a cold GPU's do."""

    def __init__(self, table):
        super().__init__(table, name="warming")
        self.produced = 0

    def generate_stream(self, input_ids, max_new_tokens):
        for token in super().generate_stream(input_ids, max_new_tokens):
            time.sleep(0.002 + 0.03 * 0.85 ** self.produced)
            self.produced += 1
            yield token


def test_latency_warms_up_until_steady_not_a_fixed_count(table):
    stats = measure_latency(WarmingRunner(table), torch.tensor([1, 2]), new_tokens=12, runs=2, warmup=1,
                            progress=False)
    # runs 1 and 2 differ by ~4x and runs 2 and 3 by ~1.6x: no steadiness test stops before the third run
    assert 3 <= stats["warmup_runs"] <= 12
    assert stats["timer"] == "perf_counter"


def test_latency_warm_up_ends_at_its_time_budget(table):
    """A model slow enough to spend the warm-up budget in one run (a 7B on a CPU) is not warmed up to 12 runs."""
    stats = measure_latency(WarmingRunner(table), torch.tensor([1, 2]), new_tokens=12, runs=1, warmup=1,
                            progress=False, max_warmup_s=0.0)
    assert stats["warmup_runs"] == 1 and stats["steady"] is False


def test_latency_reports_achieved_bandwidth(table):
    runner = BigramRunner(table)
    runner.compute_path = "dense"
    stats = measure_latency(runner, torch.tensor([1, 2, 3]), new_tokens=8, runs=3, progress=False)
    assert stats["achieved_bandwidth_gb_s"] == pytest.approx(runner.weight_bytes() * stats["decode_tokens_per_s"]
                                                             / 1e9)
    assert stats["bandwidth_fraction"] == pytest.approx(stats["achieved_bandwidth_gb_s"] * 1e9
                                                        / device_bandwidth("cpu"))
    assert device_bandwidth("cpu") > 0 and stats["compute_path"] == "dense"


def synthetic_windows(k: int, reps: int, seed: int, true_mean: float = 0.01):
    """``reps`` evaluations of ``k`` windows (the last one half full) of per-token loss differences:
    a window-level effect (some passages are harder), skewed token noise, AR(1)-correlated within a window."""
    rng = np.random.default_rng(seed)
    counts = np.full(k, 128)
    counts[-1] = 64
    effect = rng.normal(0, 0.05, (reps, k, 1))
    shocks = rng.gamma(2.0, 0.1, (reps, k, 128)) - 0.2  # mean 0, right-skewed
    tokens = lfilter([1.0], [1.0, -0.6], shocks, axis=-1) + effect + true_mean
    return (tokens * (np.arange(128) < counts[:, None])).sum(-1), counts


def coverage(k: int, reps: int = 2000, seed: int = 0, z: bool = False) -> float:
    nums, counts = synthetic_windows(k, reps, seed)
    hits = 0
    for num in nums:
        if z:
            mean, se = ratio_stat(num, counts)
            lo, hi = mean - Z95 * se, mean + Z95 * se
        else:
            _, lo, hi = ratio_interval(num, counts)
        hits += lo <= 0.01 <= hi
    return hits / reps


@pytest.mark.parametrize("windows", [3, 15])
def test_intervals_cover_95_percent_on_synthetic_windows(windows):
    """The 95% interval holds the true mean in 92-98% of 2000 simulated evaluations, with 3 windows
    (08's setting) and 15 (03's)."""
    assert 0.92 <= coverage(windows) <= 0.98


def test_the_simulation_catches_a_normal_quantile_with_few_windows():
    """1.96 with 3 windows (the interval the library used to give) covers about 80%: the simulation can fail."""
    assert coverage(3, z=True) < 0.88


def test_t_quantiles_match_the_table():
    assert t_quantile(3) == pytest.approx(4.303, abs=1e-3)
    assert t_quantile(15) == pytest.approx(2.145, abs=1e-3)
    assert t_quantile(10_000) == pytest.approx(Z95, abs=1e-3)
    assert math.isnan(t_quantile(1))
    mean, lo, hi = ratio_interval([1, 3], [1, 1])  # se 1, 1 degree of freedom: 12.706
    assert (mean, hi - mean, mean - lo) == (2.0, pytest.approx(12.706, abs=1e-3), pytest.approx(12.706, abs=1e-3))


def test_delta_reading_reads_both_sides_alike():
    assert delta_reading(0.1, 0.5) == "worse"
    assert delta_reading(-0.2, 0.5) == "within noise"
    assert delta_reading(-0.9, -0.1) == "better"
    assert delta_reading(float("nan"), float("nan")) == "no interval"  # one window: nothing to read


def test_paired_difference_between_two_variants(table, ids):
    settings = EvalSettings(32, 16, None)
    base = score(BigramRunner(table), ids, settings, keep_logprobs=True, progress=False)
    rng = torch.Generator().manual_seed(3)
    near = score(BigramRunner(table + 0.05 * torch.randn(table.shape, generator=rng)), ids, settings,
                 baseline=base, progress=False)
    far = score(BigramRunner(table + 2.0 * torch.randn(table.shape, generator=rng)), ids, settings,
                baseline=base, progress=False)
    same = paired_difference(near, near)
    assert same["delta_ppl_pct"] == 0 and same["delta_ppl_reading"] == "indistinguishable"
    d = paired_difference(near, far)
    assert d["kl_divergence_reading"] == "a lower" and d["kl_divergence_diff"] < 0
    assert d["delta_ppl_reading"] == "a lower"
    lo, hi = d["delta_ppl_pct_ci"]
    assert lo < d["delta_ppl_pct"] < hi < 0
    by_hand = 100 * math.expm1((near.nll.sum() - far.nll.sum()) / near.counts.sum())
    assert d["delta_ppl_pct"] == pytest.approx(by_hand)
    lo, hi = d["kl_divergence_diff_ci_bootstrap"]
    assert lo <= d["kl_divergence_diff"] <= hi < 0  # the tokens' bootstrap agrees: a is lower
    assert d["delta_ppl_pct_ci_bootstrap"][1] < 0
    swapped = paired_difference(far, near)
    assert swapped["delta_ppl_reading"] == "b lower"
    assert swapped["kl_divergence_diff"] == pytest.approx(-d["kl_divergence_diff"])
    other = score(BigramRunner(table), ids, EvalSettings(32, 8, None), progress=False)
    with pytest.raises(InputError, match="same text"):
        paired_difference(near, other)


def test_latency_percentiles_from_few_gaps_are_flagged_indicative(table):
    assert percentiles_indicative(16) == ["p95", "p99"]
    assert percentiles_indicative(155) == ["p99"]
    assert percentiles_indicative(1000) == []
    out = measure_latency(BigramRunner(table), torch.tensor([1, 2, 3]), new_tokens=5, runs=4, progress=False)
    assert out["latency_samples"] == 4 * 4  # 4 runs x the 4 gaps between 5 tokens
    assert out["latency_indicative"] == ["p95", "p99"]


def ar1_series(n: int, reps: int, seed: int, phi: float = 0.6, true_mean: float = 0.01) -> np.ndarray:
    """``reps`` series of ``n`` per-token figures: right-skewed shocks (mean 0) through an AR(1) filter,
    as neighbouring tokens of one text are correlated."""
    shocks = np.random.default_rng(seed).gamma(2.0, 0.1, (reps, n)) - 0.2
    return lfilter([1.0], [1.0, -phi], shocks, axis=-1) + true_mean


def bootstrap_coverage(block: int | None, n: int = 4000, reps: int = 800, resamples: int = 500) -> float:
    hits = 0
    for i, series in enumerate(ar1_series(n, reps, seed=7)):
        _, lo, hi, _ = block_bootstrap_interval(series, block=block, resamples=resamples, seed=i)
        hits += lo <= 0.01 <= hi
    return hits / reps


def test_block_bootstrap_covers_95_percent_on_autocorrelated_tokens():
    """AR(1) tokens (phi 0.6: the long-run variance is 4x the per-token one): the circular block bootstrap
    with the Politis-White block covers the true mean in 92-98% of 800 simulated evaluations of 4,000 tokens."""
    assert 0.92 <= bootstrap_coverage(block=None) <= 0.98


def test_the_simulation_catches_an_iid_bootstrap():
    """One-token blocks (an iid bootstrap: every token independent) cover about 2/3 on the same series."""
    assert bootstrap_coverage(block=1, reps=150, resamples=200) < 0.8


def test_block_length_follows_the_correlation():
    iid, correlated = np.random.default_rng(0).normal(size=(2, 4000))
    correlated = lfilter([1.0], [1.0, -0.8], correlated)
    assert block_length(iid) <= 3 < 20 <= block_length(correlated) <= 3 * math.sqrt(4000)
    assert block_length(np.ones(100)) == 1
    mean, lo, hi, block = block_bootstrap_interval(np.full(50, 0.25))
    assert (mean, lo, hi, block) == (0.25, 0.25, 0.25, 1)


def test_block_bootstrap_by_hand_and_seeded():
    x = np.arange(10.0)
    # blocks of the whole series: every resample is a rotation of it, with the same mean
    assert block_bootstrap_interval(x, block=10, resamples=50)[1:3] == (4.5, 4.5)
    assert block_bootstrap_interval(x, seed=3) == block_bootstrap_interval(x, seed=3)
    with pytest.raises(InputError, match="between 1 and"):
        block_bootstrap_interval(x, block=11)
    with pytest.raises(InputError, match="at least 2"):
        block_bootstrap_interval(x[:1])


def test_against_gives_bootstrap_intervals_beside_the_window_ones(table, ids):
    settings = EvalSettings(32, 16, None)
    base = score(BigramRunner(table), ids, settings, keep_logprobs=True, progress=False)
    noisy = table + 0.5 * torch.randn(table.shape, generator=torch.Generator().manual_seed(5))
    variant = score(BigramRunner(noisy), ids, settings, baseline=base, progress=False)
    out = variant.against(base)
    assert variant.token_nll.shape == variant.token_kl.shape == (variant.scored_tokens,)
    assert variant.nll.sum() == pytest.approx(variant.token_nll.sum(), rel=1e-6)
    for key in ("kl_divergence", "top1_agreement"):
        lo, hi = out[f"{key}_ci95_bootstrap"]
        assert lo <= out[key] <= hi
    lo, hi = out["delta_ppl_pct_ci95_bootstrap"]
    assert lo < out["delta_ppl_pct"] < hi and out["bootstrap_block_tokens"] >= 1
    assert "kl_divergence_ci95_bootstrap" not in variant.against(base, bootstrap=False)


@pytest.mark.parametrize("k", [1, 3, VOCAB - 1, 64])
def test_top_k_baseline_kl_is_the_merged_tail_kl_and_top1_is_exact(table, ids, k, tmp_path):
    other = table + 1.0 * torch.randn(table.shape, generator=torch.Generator().manual_seed(2))
    settings = EvalSettings(32, 16, None)
    full = score(BigramRunner(table), ids, settings, keep_logprobs=True, progress=False)
    top = score(BigramRunner(table), ids, settings, keep_logprobs=True, top_k=k, progress=False)
    kept = min(k, VOCAB - 1)
    assert top.logprobs is None and top.base_top_k == kept and top.top_ids.shape == (top.scored_tokens, kept)
    mass = np.exp(top.top_logprobs.astype(float)).sum(1) + np.exp(top.tail_logprob.astype(float))
    assert mass == pytest.approx(np.ones_like(mass), abs=1e-5)
    top.save(tmp_path / "base")
    top = type(top).load(tmp_path / "base")
    exact = score(BigramRunner(other), ids, settings, baseline=full, progress=False).against(full)
    approx = score(BigramRunner(other), ids, settings, baseline=top, progress=False).against(top)
    assert approx["top1_agreement"] == exact["top1_agreement"] and approx["kl_base_top_k"] == kept
    assert exact["kl_base_top_k"] is None
    # by hand: each row's distributions with every token outside the baseline's top k merged into one outcome
    p, q = torch.log_softmax(table.double(), -1)[ids[:-1]], torch.log_softmax(other.double(), -1)[ids[:-1]]
    order = p.argsort(-1, descending=True)
    merged_p = torch.cat([p.gather(1, order[:, :kept]), p.gather(1, order[:, kept:]).logsumexp(-1, keepdim=True)], 1)
    merged_q = torch.cat([q.gather(1, order[:, :kept]), q.gather(1, order[:, kept:]).logsumexp(-1, keepdim=True)], 1)
    by_hand = float((merged_p.exp() * (merged_p - merged_q)).sum(-1).mean())
    assert approx["kl_divergence"] == pytest.approx(by_hand, rel=1e-4)
    assert approx["kl_divergence"] <= exact["kl_divergence"] * (1 + 1e-6)  # merging outcomes never raises KL
    if kept == VOCAB - 1:  # a one-token tail is the full distribution
        assert approx["kl_divergence"] == pytest.approx(exact["kl_divergence"], rel=1e-5)


def test_a_baseline_kept_on_disk_scores_like_the_one_in_memory(table, ids, tmp_path):
    """compare --resume measures against the baseline memory-mapped from disk: same KL, and a mapping torch
    takes without its read-only warning (copy-on-write; nothing writes to it)."""
    other = table + 0.5 * torch.randn(table.shape, generator=torch.Generator().manual_seed(3))
    settings = EvalSettings(32, 16, None)
    base = score(BigramRunner(table), ids, settings, keep_logprobs=True, progress=False)
    base.save(tmp_path / "base")
    kept = type(base).load(tmp_path / "base")
    assert isinstance(kept.logprobs, np.memmap) and kept.logprobs.flags.writeable
    in_memory = score(BigramRunner(other), ids, settings, baseline=base, progress=False).against(base)
    on_disk = score(BigramRunner(other), ids, settings, baseline=kept, progress=False).against(kept)
    assert on_disk["kl_divergence"] == pytest.approx(in_memory["kl_divergence"], rel=1e-6)


def test_top_k_must_keep_a_token(table, ids):
    with pytest.raises(InputError, match="top_k"):
        score(BigramRunner(table), ids, EvalSettings(32, 16, None), keep_logprobs=True, top_k=0, progress=False)


def test_top_k_baseline_on_the_default_model(default_model, tokenizer, eval_ids, small_eval_settings, tmp_path):
    """The stated tolerance: against the default model's fp32 kept as its top 256 of 4096 tokens (ids and
    log-probs: 1/8 of the bytes), int4-g32's KL is at most 10% below the full-vocabulary KL (never above it),
    and top-1 is identical."""
    from edgekit.runtimes import build_runner

    fp32 = build_runner("fp32", default_model, tokenizer)
    full = score(fp32, eval_ids, small_eval_settings, keep_logprobs=True, progress=False)
    top = score(fp32, eval_ids, small_eval_settings, keep_logprobs=True, top_k=256, progress=False)
    fp32.close()
    top.save(tmp_path / "top")
    top = type(top).load(tmp_path / "top")
    assert top.top_ids.nbytes + top.top_logprobs.nbytes == full.logprobs.nbytes / 8
    int4 = build_runner("int4-g32", default_model, tokenizer)
    exact = score(int4, eval_ids, small_eval_settings, baseline=full, progress=False).against(full)
    approx = score(int4, eval_ids, small_eval_settings, baseline=top, progress=False).against(top)
    int4.close()
    assert approx["top1_agreement"] == exact["top1_agreement"]
    assert 0.9 * exact["kl_divergence"] <= approx["kl_divergence"] <= exact["kl_divergence"]
    assert 0 < approx["kl_base_tail_mass"] < 0.1


def test_windows_of_a_model_whose_tokenizer_adds_bos_begin_with_it(gemma_checkpoint):
    """On a (tiny) Gemma whose tokenizer begins every text with BOS, each window is fed BOS first and scores the
    same tokens: its perplexity equals the guide's loop with BOS put before every window, and differs from the
    loop without it."""
    from edgekit.core.paths import eval_token_ids
    from edgekit.models.load import load_tokenizer
    from edgekit.runtimes import build_runner

    tokenizer = load_tokenizer(gemma_checkpoint)
    ids = eval_token_ids(tokenizer, "eval")[:300]
    runner = build_runner("fp32", gemma_checkpoint, tokenizer)
    scores = score(runner, ids, EvalSettings(context=64, stride=32, max_tokens=None, batch_size=4), progress=False)
    bos = torch.tensor([[tokenizer.bos_token_id]])

    def window_loss(with_bos):
        def loss(input_ids, target_ids):
            if with_bos:  # the window's first token stays unscored (its label was never used without BOS)
                unscored = torch.full((1, 2), -100)
                input_ids, target_ids = torch.cat([bos, input_ids], 1), torch.cat([unscored, target_ids[:, 1:]], 1)
            return runner.model(input_ids=input_ids, labels=target_ids).loss
        return loss

    with torch.inference_mode():
        with_bos, scored = hf_guide_perplexity(ids, 64, 32, window_loss(True))
        without, _ = hf_guide_perplexity(ids, 64, 32, window_loss(False))
    runner.close()
    assert scores.scored_tokens == scored == len(ids) - 1
    assert scores.perplexity()["perplexity"] == pytest.approx(with_bos, rel=2e-5)
    assert abs(without / with_bos - 1) > 2e-4  # a random model barely uses BOS; Gemma 3 270M is 3x worse without
