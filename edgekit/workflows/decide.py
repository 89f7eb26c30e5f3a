"""The decision: which variant, on which runtime, for this device and these limits.

Given a device profile (:func:`edgekit.memory.profiles.load_profile`), the most quality you will give up (KL
from the baseline, or the perplexity change) and a latency target (decode tokens/s, or P99 ms per
token), every variant the results store measured is checked against each limit; of those that pass
them all, the one with the fewest weight bytes is recommended (then the faster one). Every other
candidate is listed with the limits it failed, and when none passes the answer says so and names
the candidate closest to passing: the one that fails the fewest limits, then by the smallest miss.

How each limit is judged:

- **quality** on the upper bound of the row's 95% interval (``kl_divergence_ci95``,
  ``delta_ppl_pct_ci95``), not its point estimate: a variant is admitted when the measurement says
  it is within the limit, not when it might be. A row stored without an interval is judged on its
  point estimate, and the table says so.
- **device and memory** by the planner: the profile must run the variant's runtime, and the
  variant's plan (weights, KV cache, activations, runtime, load peak) at ``context`` must fit it.
- **latency** on what the rows measured, on the machine they were measured on (the row's
  environment names its CPU), not on the target device, whose speed the store does not hold;
  decode tokens/s on the lower bound of its 95% interval (``decode_tokens_per_s_ci95``, the speed
  protocol of :mod:`edgekit.measure.speed`; a row stored without one on its point estimate, and the table
  says so); a P99 the protocol withheld (fewer than ``P99_MIN_SAMPLES`` gaps) fails the limit rather
  than pass on a guess, and an older row's P99 from too few samples (``latency_indicative``) is used
  and flagged. A row whose repetitions ran contended (other processes on its cores) backs no speed
  limit unless ``trust_contended`` is given.

Rows are the newest ``ok`` row of each variant of one model, among those scored on the same tokens
and settings as the newest row (KL from other text or another baseline does not compare).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import pandas as pd

from edgekit.core.errors import EdgekitError, InputError
from edgekit.measure.speed import P99_MIN_SAMPLES, rate_bounds, trusted
from edgekit.measure.store import Result, ResultStore
from edgekit.memory.plan import plan_memory
from edgekit.memory.profiles import GIB, DeviceProfile, load_profile
from edgekit.variants.registry import Variant

# the settings a row's quality figures depend on: rows that differ here were scored on other tokens (or windows
# with another BOS rule)
QUALITY_SETTINGS = ("eval_sha256", "context", "stride", "max_tokens", "baseline", "bos_token_id")


@dataclass(frozen=True)
class Check:
    """One limit applied to one candidate: passed, and by how much it missed (relative, 0 when passed)."""

    limit: str      # device, memory, KL, Δppl %, tokens/s, P99 ms
    passed: bool
    text: str
    miss: float = 0.0


@dataclass
class Candidate:
    variant: str
    runtime: str
    weight_bytes: int
    metrics: dict
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def failures(self) -> str:
        return "; ".join(c.text for c in self.failed)


@dataclass
class Decision:
    recommended: Candidate | None
    candidates: list[Candidate]
    closest: Candidate | None
    device: DeviceProfile
    limits: dict
    measured_on: str
    left_out: int = 0   # rows of other tokens or settings, not compared

    def summary(self) -> str:
        """The answer in a few lines: the pick and why, then what each other candidate failed."""
        asked = ", ".join(f"{k} {v}" for k, v in self.limits.items() if v is not None)
        lines = [f"on {self.device.name} ({asked}); latency as measured on {self.measured_on}"]
        if self.recommended is not None:
            pick = self.recommended
            lines.append(f"recommended: {pick.variant} on {pick.runtime}, {pick.weight_bytes / 1e6:.2f} MB of "
                         f"weights: "
                         + "; ".join(c.text for c in pick.checks))
        else:
            lines.append("nothing qualifies: no measured variant passes every limit")
            if self.closest is not None:
                only = "only " if len(self.closest.failed) == 1 else ""
                lines.append(f"closest to passing: {self.closest.variant} on {self.closest.runtime}, which fails "
                             f"{only}{self.closest.failures()}")
        for c in self.candidates:
            if c is self.recommended or c is self.closest:
                continue
            why = (f"passes every limit but holds {c.weight_bytes / 1e6:.2f} MB" if c.passed else c.failures())
            lines.append(f"  {c.variant} ({c.runtime}): {why}")
        if self.left_out:
            lines.append(f"  ({self.left_out} older row(s) scored on other tokens or settings left out)")
        return "\n".join(lines)

    def frame(self) -> pd.DataFrame:
        """One row per candidate: its figures as judged, and its verdict."""
        rows = []
        for c in self.candidates:
            m = c.metrics
            verdict = ("recommended" if c is self.recommended else "qualifies, larger" if c.passed
                       else "fails " + ", ".join(k.limit for k in c.failed))
            rows.append({"variant": c.variant, "runtime": c.runtime, "weights MB": c.weight_bytes / 1e6,
                         "KL bound": quality_bound(m, "kl_divergence")[0],
                         "Δppl % bound": quality_bound(m, "delta_ppl_pct")[0],
                         "tok/s": m.get("decode_tokens_per_s"), "tok/s low": rate_bounds(m)[0],
                         "p99 ms": m.get("latency_ms_p99"), "contended": m.get("contended"),
                         "verdict": verdict})
        return pd.DataFrame(rows)


def quality_bound(metrics: dict, key: str) -> tuple[float | None, str]:
    """The upper bound of ``key``'s 95% interval when the row has one, else its point estimate; and which."""
    interval = metrics.get(f"{key}_ci95")
    if interval and not all(v == 0 for v in interval):
        return float(interval[1]), "95% upper bound"
    value = metrics.get(key)
    return (None if value is None else float(value)), "point estimate"


def decide(store: "ResultStore | str | os.PathLike | Iterable[Result]", device: "str | DeviceProfile" = "laptop-16gb",
           *, max_kl: float | None = None, max_delta_ppl_pct: float | None = None,
           min_tokens_per_s: float | None = None, max_p99_ms: float | None = None, context: int = 2048,
           model: str | None = None, trust_contended: bool = False) -> Decision:
    """Recommend a variant and runtime from the measured rows in ``store`` (a store, its path, or results).

    ``trust_contended``: let rows timed under contention pass speed limits all the same."""
    profile = load_profile(device)
    rows = comparable_rows(_results(store), model)
    newest = rows[-1]
    kept = _same_scoring(rows, newest)
    candidates = [_candidate(r, profile, context, max_kl, max_delta_ppl_pct, min_tokens_per_s, max_p99_ms,
                             trust_contended) for r in kept]
    passing = sorted((c for c in candidates if c.passed),
                     key=lambda c: (c.weight_bytes, -(c.metrics.get("decode_tokens_per_s") or 0)))
    failing = sorted((c for c in candidates if not c.passed), key=lambda c: (len(c.failed),
                                                                             sum(k.miss for k in c.failed)))
    limits = {"max KL": max_kl, "max Δppl %": max_delta_ppl_pct, "min tokens/s": min_tokens_per_s,
              "max P99 ms": max_p99_ms, "context": context}
    return Decision(passing[0] if passing else None, passing + failing, None if passing else failing[0], profile,
                    limits, newest.environment.get("cpu") or "an unrecorded machine", len(rows) - len(kept))


def _results(store) -> list[Result]:
    if isinstance(store, ResultStore):
        return store.results(kind="compare")
    if isinstance(store, (str, os.PathLike)):
        if not Path(store).is_file():
            raise InputError(f"no results store at {store}; run `edgekit compare --store {store}` first")
        return ResultStore(store).results(kind="compare")
    return [r for r in store if r.kind == "compare"]


def comparable_rows(results: list[Result], model: str | None) -> list[Result]:
    """The newest ``ok`` row of each variant of one model, oldest first."""
    ok = [r for r in results if r.status == "ok"]
    models = list(dict.fromkeys(r.model for r in ok))
    if not ok:
        raise InputError("the store holds no measured comparison; run `edgekit compare` (or a notebook) first")
    if model is None and len(models) > 1:
        raise InputError(f"the store holds results of several models ({', '.join(models)}); say which with model=")
    model = model or models[0]
    if model not in models:
        raise InputError(f"the store holds no results for {model!r}; it holds {', '.join(models)}")
    newest = {r.variant: r for r in ok if r.model == model}
    return sorted(newest.values(), key=lambda r: r.created)


def _same_scoring(rows: list[Result], reference: Result) -> list[Result]:
    key = lambda r: [r.settings.get(k) for k in QUALITY_SETTINGS]
    return [r for r in rows if key(r) == key(reference)]


def _candidate(row: Result, profile: DeviceProfile, context: int, max_kl, max_dppl, min_tps, max_p99,
               trust_contended: bool = False) -> Candidate:
    variant = Variant.parse(row.variant)
    m = row.metrics
    candidate = Candidate(row.variant, variant.family, int(m.get("weight_bytes") or 0), m)
    candidate.checks.append(_fits(row, variant, profile, context))
    for key, label, limit in (("kl_divergence", "KL", max_kl), ("delta_ppl_pct", "Δppl %", max_dppl)):
        if limit is not None:
            value, which = quality_bound(m, key)
            candidate.checks.append(_at_most(label, value, limit, which))
    speed_limits = [(label, limit) for label, limit in (("tokens/s", min_tps), ("P99 ms", max_p99))
                    if limit is not None]
    if speed_limits and not trusted(m, trust_contended):
        for label, _ in speed_limits:
            candidate.checks.append(Check(label, False, f"{label} measured while other processes held its cores "
                                          "(contended): measure again on a quiet machine, or trust_contended=True",
                                          math.inf))
        return candidate
    if min_tps is not None:
        low, _ = rate_bounds(m)
        which = "95% lower bound" if m.get("decode_tokens_per_s_ci95") else "point estimate"
        if low is None:
            candidate.checks.append(Check("tokens/s", False, "tokens/s not measured", math.inf))
        else:
            passed = low >= min_tps
            candidate.checks.append(Check("tokens/s", passed, f"{low:.0f} tokens/s ({which}) {'≥' if passed else '<'} "
                                          f"{min_tps:g}", 0.0 if passed else (min_tps - low) / min_tps))
    if max_p99 is not None:
        flagged = "p99" in (m.get("latency_indicative") or [])
        if m.get("latency_ms_p99") is None and m.get("latency_samples") is not None:
            candidate.checks.append(Check("P99 ms", False, f"P99 withheld: {m['latency_samples']} decode steps timed, "
                                          f"fewer than {P99_MIN_SAMPLES}; time more repetitions to judge it",
                                          math.inf))
        else:
            candidate.checks.append(_at_most("P99 ms", m.get("latency_ms_p99"), max_p99,
                                             "indicative: too few samples" if flagged else "measured"))
    return candidate


def _at_most(label: str, value: float | None, limit: float, which: str) -> Check:
    if value is None:
        return Check(label, False, f"{label} not measured", math.inf)
    passed = value <= limit
    miss = 0.0 if passed else (value - limit) / limit if limit > 0 else math.inf
    return Check(label, passed, f"{label} {value:.4g} ({which}) {'≤' if passed else '>'} {limit:g}", miss)


def _fits(row: Result, variant: Variant, profile: DeviceProfile, context: int) -> Check:
    if not profile.can_run(variant.name):
        return Check("device", False, f"{profile.name} does not run {variant.name} ({variant.family})", math.inf)
    try:
        plan = plan_memory(row.model, str(variant), context=context, device=profile)
    except EdgekitError as exc:
        return Check("memory", False, f"cannot be planned: {exc}", math.inf)
    if plan.fits:
        return Check("memory", True, f"fits {profile.name} at context {context} "
                                     f"({plan.total_bytes / GIB:.2f} of {plan.budget_bytes / GIB:.2f} GiB)")
    need = max(plan.total_bytes, plan.peak_bytes)
    return Check("memory", False, f"does not fit {profile.name} at context {context} ({need / GIB:.2f} GiB "
                                  f"needed, {plan.budget_bytes / GIB:.2f} GiB usable)",
                 (need - plan.budget_bytes) / max(plan.budget_bytes, 1))
