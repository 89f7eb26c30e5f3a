"""A canary check between two artifacts: should the candidate replace the one in service?

Modelled on a canary rollout (Google SRE Workbook, "Canarying Releases"): the candidate
is measured beside the current artifact on the same input, by the same code, and is
promoted only if it stays within limits the user sets. Quality is judged as the
comparison table judges variants (:mod:`edgekit.measure.quality`): the current artifact is the
baseline, the candidate gets a paired perplexity delta, the KL divergence from the
current artifact's next-token distribution and the top-1 agreement, each with its
uncertainty; speed by the protocol of :mod:`edgekit.measure.speed`: the two artifacts timed in interleaved
rounds (so a change in machine load falls on both), the slowdown from the candidate's decode rate
over the current one's paired by round, judged on the pessimistic end of its 95% interval. The tail
is gated on P99 only when both artifacts timed at least ``P99_MIN_SAMPLES`` decode steps (P99
increase judged on the candidate's upper and the current one's lower bootstrap bound); with fewer,
the check is the median step time's increase with its interval (1 / the paired ratio), and says so.
Speed measured while other processes held the cores (contended) fails the speed checks unless the
thresholds say ``trust_contended``. Both artifacts are verified before anything runs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from edgekit.artifacts.manifest import verify_artifact
from edgekit.core.errors import ArtifactError
from edgekit.measure.quality import EvalSettings, score
from edgekit.measure.speed import P99_MIN_SAMPLES, measure_speed, median_interval, paired_ratios, speed_figures
from edgekit.measure.stats import Z95
from edgekit.runtimes import load_artifact


@dataclass(frozen=True)
class CanaryThresholds:
    """Limits the candidate must stay within, relative to the current artifact."""

    max_delta_ppl_pct: float = 1.0           # perplexity may rise at most this many percent
    max_kl_divergence: float = 0.02          # mean KL(current || candidate), nats per token
    min_top1_agreement: float = 0.95         # share of tokens where both pick the same next token
    max_slowdown_pct: float = 10.0           # decode tokens/s may drop at most this many percent
    max_p99_increase_pct: float = 25.0       # P99 decode-step latency (median without enough samples) may rise at
                                             # most this much
    trust_contended: bool = False            # judge speed measured while other processes held the cores all the same


@dataclass
class CanaryReport:
    candidate: str
    current: str
    metrics: dict
    checks: list[dict] = field(default_factory=list)
    thresholds: CanaryThresholds | None = None

    @property
    def promote(self) -> bool:
        return all(c["passed"] for c in self.checks)

    @property
    def verdict(self) -> str:
        failed = [c["check"] for c in self.checks if not c["passed"]]
        return "promote" if not failed else "hold back: " + ", ".join(failed)

    def judged(self, thresholds: CanaryThresholds) -> "CanaryReport":
        """The same measurements judged against other thresholds (nothing is measured again)."""
        return CanaryReport(self.candidate, self.current, self.metrics, judge(self.metrics, thresholds), thresholds)

    def frame(self) -> pd.DataFrame:
        """One row per check: the measured value, its limit and whether it passed."""
        return pd.DataFrame(self.checks)


def _check(name: str, value: float, limit: float, passed: bool, unit: str, bound: float | None = None) -> dict:
    """One row of the verdict: the point estimate, the bound the decision was taken on (the estimate itself
    where the figure has no interval), the limit and whether it passed."""
    return {"check": name, "value": round(value, 4), "bound": round(value if bound is None else bound, 4),
            "limit": limit, "unit": unit, "passed": bool(passed)}


def canary(candidate: str | Path, current: str | Path, token_ids, thresholds: CanaryThresholds = CanaryThresholds(),
           settings: EvalSettings = EvalSettings(context=128, stride=64, max_tokens=2048),
           prompt_tokens: int = 32, new_tokens: int = 32, runs: int = 5, progress: bool = True) -> CanaryReport:
    """Measure ``candidate`` against ``current`` (artifact folders) on ``token_ids`` and give a verdict."""
    manifests = {role: verify_artifact(path) for role, path in (("candidate", candidate), ("current", current))}
    tokenizers = {role: m.data["files"].get("tokenizer.json", {}).get("sha256") for role, m in manifests.items()}
    if tokenizers["candidate"] != tokenizers["current"]:
        raise ArtifactError("the two artifacts ship different tokenizers, so their token-level quality cannot be "
                            "compared; canary artifacts of the same model")
    runners = {role: load_artifact(path) for role, path in (("current", current), ("candidate", candidate))}
    try:
        base = score(runners["current"], token_ids, settings, keep_logprobs=True, progress=progress)
        cand = score(runners["candidate"], token_ids, settings, baseline=base, progress=progress)
        quality = cand.against(base)
        prompt = token_ids.reshape(-1)[:prompt_tokens]
        reps = measure_speed(runners, prompt, new_tokens, runs, progress=progress)
    finally:
        for runner in runners.values():
            runner.close()
    metrics = {**quality, "perplexity_current": base.perplexity()["perplexity"],
               "perplexity_candidate": cand.perplexity()["perplexity"],
               **speed_change(reps["candidate"], reps["current"]),
               "weight_bytes_current": _model_bytes(manifests["current"]),
               "weight_bytes_candidate": _model_bytes(manifests["candidate"])}
    return CanaryReport(manifests["candidate"].variant, manifests["current"].variant, metrics).judged(thresholds)


def speed_change(candidate: list, current: list) -> dict:
    """The canary's speed figures from both artifacts' repetitions (:class:`edgekit.measure.speed.Repetition`):
    decode rates, the slowdown paired by round with its interval, and P99 (each with its bootstrap interval,
    None when withheld) or, without enough samples, the median step time's increase with its interval."""
    figures = {role: speed_figures(reps) for role, reps in (("candidate", candidate), ("current", current))}
    ratio, lo, hi, _ = median_interval(paired_ratios(candidate, current))
    out = {"tokens_per_s_current": figures["current"]["decode_tokens_per_s"],
           "tokens_per_s_candidate": figures["candidate"]["decode_tokens_per_s"],
           "slowdown_pct": 100 * (1 - ratio),
           "slowdown_pct_ci95": None if lo is None else [100 * (1 - hi), 100 * (1 - lo)],
           "contended": bool(figures["current"]["contended"] or figures["candidate"]["contended"])}
    for role in ("current", "candidate"):
        out[f"p99_ms_{role}"] = figures[role]["latency_ms_p99"]
        out[f"p99_ms_{role}_ci95"] = figures[role]["latency_ms_p99_ci95"]
        out[f"latency_samples_{role}"] = figures[role]["latency_samples"]
    if out["p99_ms_current"] is not None and out["p99_ms_candidate"] is not None:
        out["p99_increase_pct"] = 100 * (out["p99_ms_candidate"] / out["p99_ms_current"] - 1)
        cand_ci, cur_ci = out["p99_ms_candidate_ci95"], out["p99_ms_current_ci95"]
        out["p99_increase_pct_bound"] = (100 * (cand_ci[1] / cur_ci[0] - 1) if cand_ci and cur_ci
                                         else out["p99_increase_pct"])
    else:  # P99 withheld: the median step time (1 / the paired decode-rate ratio) and its interval
        out["median_step_increase_pct"] = 100 * (1 / ratio - 1)
        out["median_step_increase_pct_bound"] = 100 * (1 / (lo if lo is not None else ratio) - 1)
    return out


def judge(metrics: dict, t: CanaryThresholds) -> list[dict]:
    """The checks of a canary's measurements against thresholds; quality is judged on the
    pessimistic end of its 95% interval, so a noisy measurement cannot pass by luck."""
    m = metrics
    kl_hi = (m["kl_divergence_ci95"][1] if "kl_divergence_ci95" in m
             else m["kl_divergence"] + Z95 * m["kl_divergence_se"])
    top1_lo = (m["top1_agreement_ci95"][0] if "top1_agreement_ci95" in m
               else m["top1_agreement"] - Z95 * m["top1_agreement_se"])
    ppl_hi = m["delta_ppl_pct_ci95"][1]
    return [
        _check("perplexity delta", m["delta_ppl_pct"], t.max_delta_ppl_pct,
               ppl_hi <= t.max_delta_ppl_pct, "% (upper 95% bound)", ppl_hi),
        _check("KL divergence", m["kl_divergence"], t.max_kl_divergence,
               kl_hi <= t.max_kl_divergence, "nats/token (upper 95% bound)", kl_hi),
        _check("top-1 agreement", m["top1_agreement"], t.min_top1_agreement,
               top1_lo >= t.min_top1_agreement, "share (lower 95% bound)", top1_lo),
    ] + _speed_checks(m, t)


def _speed_checks(m: dict, t: CanaryThresholds) -> list[dict]:
    """Slowdown on its interval's pessimistic end; P99 increase with enough samples, else the median step's;
    both failed, whatever their values, when the timing ran contended and the thresholds do not trust it."""
    slow_hi = (m.get("slowdown_pct_ci95") or [None, m["slowdown_pct"]])[1]
    if "p99_increase_pct" in m:
        tail = ("P99 latency increase", m["p99_increase_pct"], m.get("p99_increase_pct_bound", m["p99_increase_pct"]),
                "% (upper 95% bound)")
    else:
        tail = ("median latency increase", m["median_step_increase_pct"], m["median_step_increase_pct_bound"],
                f"% (upper 95% bound; P99 withheld: fewer than {P99_MIN_SAMPLES} steps)")
    distrusted = m.get("contended") and not t.trust_contended
    unit = " - contended: measure again on a quiet machine" if distrusted else ""
    return [_check("decode slowdown", m["slowdown_pct"], t.max_slowdown_pct,
                   not distrusted and slow_hi <= t.max_slowdown_pct, "% (upper 95% bound)" + unit, slow_hi),
            _check(tail[0], tail[1], t.max_p99_increase_pct, not distrusted and tail[2] <= t.max_p99_increase_pct,
                   tail[3] + unit, tail[2])]


def _model_bytes(manifest) -> int:
    """Bytes of the model files an artifact ships (graph and external weights)."""
    return sum(info["bytes"] for name, info in manifest.data["files"].items() if name.startswith("model."))


def manifest_frame(folder: str | Path) -> pd.DataFrame:
    """An artifact's manifest as a two-column table (nested fields flattened) for reading in a notebook: file sizes in
    MB or kB, floats at 3 significant figures (the manifest itself keeps them in full)."""
    data = verify_artifact(folder).data
    rows = []
    for key, value in data.items():
        if key == "files":
            for name, info in value.items():
                rows.append((f"files.{name}", f"{_size(info['bytes'])}, sha256 {info['sha256'][:16]}…"))
        elif key == "signature":
            for direction, items in value.items():
                rows.append((f"signature.{direction}", ", ".join(i["name"] for i in items[:4])
                             + (f" … ({len(items)} in all)" if len(items) > 4 else "")))
        elif isinstance(value, dict):
            rows.extend((f"{key}.{k}", _reading(v)) for k, v in value.items())
        else:
            rows.append((key, _reading(value)))
    return pd.DataFrame(rows, columns=["field", "value"])


def _size(num_bytes: int) -> str:
    """A file size for reading: ``8.48 MB``, ``259 kB``, ``131 bytes``."""
    if num_bytes >= 1e6:
        return f"{num_bytes / 1e6:.2f} MB"
    return f"{num_bytes / 1e3:.3g} kB" if num_bytes >= 1e3 else f"{num_bytes} bytes"


def _reading(value) -> str:
    """A manifest value for reading: floats at 3 significant figures (the manifest keeps them in full)."""
    return f"{value:.3g}" if isinstance(value, float) else str(value)
