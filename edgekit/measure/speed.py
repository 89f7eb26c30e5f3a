"""The speed protocol: repetitions in interleaved rounds, medians and paired ratios with intervals.

A single timed generation per variant, one variant after the other, measures the machine as much as
the variant: the same fp32 model on the same machine read 2.5 to 32 tokens/s across notebooks. Every
speed figure therefore comes from this protocol, written against the Runner interface:

- **Cold start apart.** The first call after a load (allocator, kernel selection, graph
  initialisation) is timed on its own (:func:`cold_start_ms`, time to its first token) and never
  enters TTFT; ``warmup`` untimed generations (default 1) follow before anything is timed.
- **Repetitions in interleaved rounds.** ``repetitions`` rounds (default ``REPETITIONS`` = 5); in each
  round every variant runs one short timed greedy generation (default ``NEW_TOKENS`` = 16 tokens), in
  an order shuffled per round by a seeded RNG, so a drift of the machine (thermal, a neighbour,
  frequency scaling) falls on every variant alike instead of on whichever ran last. With one runner
  at a time (variants too large to hold together) the repetitions run back to back per variant and
  the row says ``speed_protocol: per-variant``: its ratio is then not paired against drift.
- **Medians with 95% intervals.** Decode tokens/s of a repetition is (tokens - 1) / (last token -
  first token); TTFT is the time to its first token. Each is reported as the median over repetitions
  with a distribution-free interval for the median: the order-statistic (binomial) interval, with the
  Hettmansperger & Sheather (1986) interpolation between neighbouring order statistics so its coverage
  is the nominal 95% rather than the next attainable step. Five repetitions cannot reach 95%: their
  widest interval, [min, max], covers the median with probability 1 - 2/2^5 = 93.75%, which
  ``speed_ci_coverage`` reports (seven reach 95%). No normality is assumed: a repetition hit by a
  neighbour is an outlier, not a shifted mean.
- **Ratio to the baseline, paired by round.** Each round gives the ratio of the variant's decode rate
  to the baseline's in the same round (the drift cancels); ``speed_ratio`` is the median of these
  ratios and ``speed_ratio_ci95`` its interval by the same method.
- **Percentiles only where they mean something.** P50/P95/P99 of the decode-step gap come from every
  repetition's per-token gaps pooled, each with its sample count and a bootstrap interval that
  resamples whole repetitions (a repetition's gaps are correlated; resampling tokens one by one would
  be too narrow). Below ``P95_MIN_SAMPLES`` (20) gaps P95 is withheld, below ``P99_MIN_SAMPLES`` (100)
  P99 is: the value is None, the table shows nothing and nothing gates on it (a P99 of 75 gaps is
  their maximum).
- **Contention per repetition** (:mod:`edgekit.measure.contention`): every repetition is classified quiet or
  contended; a variant is ``contended`` when more than ``CONTENDED_SHARE`` (20%, so 2 of 5) of its
  repetitions are, and consumers keep such a variant out of claims unless told otherwise.

Cost: per variant one cold-start call (one token), one warm-up generation and ``repetitions`` timed
generations of ``new_tokens``: 1 + 16 + 5 x 16 = 97 decoded tokens at the defaults, against the
224 to 544 that :func:`edgekit.measure.latency.measure_latency` spends (one to twelve 32-token warm-up runs until
steady, then 5 x 32 timed tokens). Interleaving has one more cost, paid by the comparison: the variants
are loaded a second time to be held together (:mod:`edgekit.workflows.compare`). The raw repetitions
(:class:`Repetition`, each with its gaps and contention reading) are kept
so the results store can keep them.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from scipy import stats

from edgekit.core.errors import InputError
from edgekit.core.progress import tqdm
from edgekit.measure import contention
from edgekit.measure.latency import timed_generation

REPETITIONS = 5
NEW_TOKENS = 16
LEVEL = 0.95
P95_MIN_SAMPLES = 20
P99_MIN_SAMPLES = 100
CONTENDED_SHARE = 0.2
BOOTSTRAP_RESAMPLES = 1000


@dataclass
class Repetition:
    """One timed generation of one variant: where it ran in the protocol and what it measured."""

    variant: str
    round: int
    order: int                  # position within its round
    ttft_ms: float
    decode_tokens_per_s: float
    gaps_ms: list[float]        # each decode step's gap
    contended: bool | None = None   # None where the system has no counters
    contention: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def median_interval(values, level: float = LEVEL) -> tuple[float, float | None, float | None, float | None]:
    """``(median, low, high, coverage)``: the median of ``values`` and its distribution-free interval.

    The order-statistic interval [x(k), x(n-k+1)] covers the population median with probability
    1 - 2 P(Binomial(n, 1/2) < k). The largest k reaching ``level`` gives a conservative interval;
    Hettmansperger & Sheather (1986) interpolate between it and the next narrower one so that the
    coverage is ``level``. When no k reaches ``level`` (n <= 5 at 95%) the interval is [min, max] and
    ``coverage`` says what it covers. None bounds for fewer than 2 values."""
    x = np.sort(np.asarray(values, float))
    n = len(x)
    if n == 0:
        raise InputError("no repetitions to summarise; time at least one")
    median = float(np.median(x))
    if n < 2:
        return median, None, None, None
    cover = lambda k: 1 - 2 * stats.binom.cdf(k - 1, n, 0.5)  # noqa: E731
    k = 1
    while k + 1 <= n // 2 and cover(k + 1) >= level:
        k += 1
    low, high, coverage = x[k - 1], x[n - k], float(cover(k))
    if coverage > level and k + 1 <= (n + 1) // 2:
        narrower = cover(k + 1)
        share = (coverage - level) / (coverage - narrower)
        lam = (n - k) * share / (k + (n - 2 * k) * share)
        low = lam * x[k] + (1 - lam) * x[k - 1]
        high = lam * x[n - k - 1] + (1 - lam) * x[n - k]
        coverage = level
    return median, float(low), float(high), coverage


def percentile_figures(reps: list[Repetition], seed: int = 0) -> dict:
    """P50/P95/P99 of the pooled decode-step gaps, each with a bootstrap interval over repetitions; a
    percentile with fewer gaps than its minimum is withheld (None) and listed in ``latency_indicative``."""
    gaps = [np.asarray(r.gaps_ms, float) for r in reps]
    pooled = np.concatenate(gaps) if gaps else np.array([])
    out = {"latency_samples": int(len(pooled)), "latency_indicative": []}
    rng = np.random.default_rng(seed)
    draws = [np.concatenate([gaps[i] for i in rng.integers(0, len(gaps), len(gaps))])
             for _ in range(BOOTSTRAP_RESAMPLES)] if len(gaps) >= 2 else []
    for q, minimum in ((50, 2), (95, P95_MIN_SAMPLES), (99, P99_MIN_SAMPLES)):
        if len(pooled) < minimum:
            out[f"latency_ms_p{q}"], out[f"latency_ms_p{q}_ci95"] = None, None
            out["latency_indicative"].append(f"p{q}")
            continue
        out[f"latency_ms_p{q}"] = float(np.percentile(pooled, q))
        values = [np.percentile(d, q) for d in draws]
        out[f"latency_ms_p{q}_ci95"] = ([float(v) for v in np.quantile(values, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])]
                                        if values else None)
    return out


def speed_figures(reps: list[Repetition], baseline: list[Repetition] | None = None, interleaved: bool = True,
                  seed: int = 0) -> dict:
    """A variant's row figures from its repetitions (and the baseline's, for the ratio paired by round)."""
    if not reps:
        raise InputError("no repetitions to summarise; time at least one")
    rate, rate_lo, rate_hi, coverage = median_interval([r.decode_tokens_per_s for r in reps])
    ttft, ttft_lo, ttft_hi, _ = median_interval([r.ttft_ms for r in reps])
    flags = [r.contended for r in reps if r.contended is not None]
    out = {"decode_tokens_per_s": rate, "decode_tokens_per_s_ci95": _pair(rate_lo, rate_hi),
           "ttft_ms": ttft, "ttft_ms_ci95": _pair(ttft_lo, ttft_hi), "speed_ci_coverage": coverage,
           "repetitions": len(reps), "contended_repetitions": sum(flags) if flags else None,
           "contended": (sum(flags) / len(flags) > CONTENDED_SHARE) if flags else None,
           "speed_protocol": "interleaved" if interleaved else "per-variant",
           "new_tokens": len(reps[0].gaps_ms) + 1, **percentile_figures(reps, seed)}
    if baseline:
        ratio, lo, hi, _ = median_interval(paired_ratios(reps, baseline))
        out.update(speed_ratio=ratio, speed_ratio_ci95=_pair(lo, hi))
    return out


def paired_ratios(reps: list[Repetition], baseline: list[Repetition]) -> list[float]:
    """Each round's decode rate of ``reps`` over the baseline's in the same round (rounds both have)."""
    by_round = {r.round: r.decode_tokens_per_s for r in baseline}
    ratios = [r.decode_tokens_per_s / by_round[r.round] for r in reps if r.round in by_round]
    if not ratios:
        raise InputError("the variant and its baseline share no round; time them in the same rounds")
    return ratios


def _pair(low, high):
    return None if low is None else [low, high]


def _device(runner) -> torch.device:
    device = getattr(runner, "device", None)  # a torch runner's; other runtimes time on the host
    return device if isinstance(device, torch.device) else torch.device("cpu")


def cold_start_ms(runner, prompt_ids: torch.Tensor) -> float:
    """Milliseconds to the first token of one generation: call it first after the load."""
    stamps = timed_generation(runner, prompt_ids.reshape(1, -1), 1, _device(runner))
    return 1000 * (stamps[1] - stamps[0])


def measure_speed(runners: dict, prompt_ids: torch.Tensor, new_tokens: int = NEW_TOKENS,
                  repetitions: int = REPETITIONS, warmup: int = 1, seed: int = 0, threads: int | None = None,
                  progress: bool = True) -> dict[str, list[Repetition]]:
    """Warm every runner up, then time ``repetitions`` interleaved rounds; each variant's repetitions.

    ``runners`` maps a variant's name to its loaded runner (one entry: repetitions back to back).
    ``threads``: the threads the runs use, for the contention verdict (torch's count when None)."""
    if new_tokens < 2:
        raise InputError("new_tokens must be at least 2 to time decoding")
    if repetitions < 1:
        raise InputError(f"repetitions={repetitions}; time at least one")
    prompt = prompt_ids.reshape(1, -1)
    threads = threads or torch.get_num_threads()
    for runner in runners.values():
        for _ in range(warmup):
            timed_generation(runner, prompt, new_tokens, _device(runner))
    rng = np.random.default_rng(seed)
    names = list(runners)
    counted = contention.available()
    marks = [contention.snapshot()] if counted else []
    reps: list[Repetition] = []
    bar = tqdm(total=repetitions * len(names), desc="speed", unit="run", disable=not progress, leave=False)
    for round_ in range(repetitions):
        for order, i in enumerate(rng.permutation(len(names))):
            name = names[i]
            stamps = timed_generation(runners[name], prompt, new_tokens, _device(runners[name]))
            if counted:
                marks.append(contention.snapshot())
            gaps = np.diff(stamps[1:]) * 1000
            reps.append(Repetition(name, round_, order, 1000 * (stamps[1] - stamps[0]),
                                   (new_tokens - 1) / (stamps[-1] - stamps[1]), [float(g) for g in gaps]))
            bar.update()
    bar.close()
    if counted:
        for rep, reading in zip(reps, contention.classify_series(marks, threads)):
            rep.contended, rep.contention = reading.contended, reading.as_dict()
    return {name: [r for r in reps if r.variant == name] for name in names}


def trusted(metrics: dict, insist: bool = False) -> bool:
    """Whether a row's speed may back a claim: not flagged contended, unless the caller ``insist``s."""
    return insist or not metrics.get("contended")


def rate_bounds(metrics: dict) -> tuple[float | None, float | None]:
    """``(low, high)`` of a row's decode tokens/s: its 95% interval, or the point estimate twice for a row
    stored without one."""
    interval = metrics.get("decode_tokens_per_s_ci95")
    if interval:
        return float(interval[0]), float(interval[1])
    value = metrics.get("decode_tokens_per_s")
    return (None, None) if value is None else (float(value), float(value))
