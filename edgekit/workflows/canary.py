"""A canary check between two artifacts: should the candidate replace the one in service?

Modelled on a canary rollout (Google SRE Workbook, "Canarying Releases"): the candidate
is measured beside the current artifact on the same input, by the same code, and is
promoted only if it stays within limits the user sets. Quality is judged as the
comparison table judges variants (:mod:`edgekit.measure.quality`): the current artifact is the
baseline, the candidate gets a paired perplexity delta, the KL divergence from the
current artifact's next-token distribution and the top-1 agreement, each with its
uncertainty; speed by decode tokens/s and P99 decode-step latency from
:func:`~edgekit.measure.quality.measure_latency`, the two artifacts timed alternately so that a
change in machine load falls on both. Both artifacts are verified before anything runs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from edgekit.artifacts.manifest import verify_artifact
from edgekit.core.errors import ArtifactError
from edgekit.measure.quality import Z95, EvalSettings, measure_latency, score
from edgekit.runtimes import load_artifact


@dataclass(frozen=True)
class CanaryThresholds:
    """Limits the candidate must stay within, relative to the current artifact."""

    max_delta_ppl_pct: float = 1.0           # perplexity may rise at most this many percent
    max_kl_divergence: float = 0.02          # mean KL(current || candidate), nats per token
    min_top1_agreement: float = 0.95         # share of tokens where both pick the same next token
    max_slowdown_pct: float = 10.0           # decode tokens/s may drop at most this many percent
    max_p99_increase_pct: float = 25.0       # P99 decode-step latency may rise at most this much


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
        timings = {"current": [], "candidate": []}
        for _ in range(2):  # alternate so that load changes on a shared machine fall on both
            for role in ("current", "candidate"):
                timings[role].append(measure_latency(runners[role], prompt, new_tokens, runs, warmup=1,
                                                     progress=progress))
    finally:
        for runner in runners.values():
            runner.close()
    speed = {role: max(t["decode_tokens_per_s"] for t in ts) for role, ts in timings.items()}
    p99 = {role: min(t["latency_ms_p99"] for t in ts) for role, ts in timings.items()}
    metrics = {**quality, "perplexity_current": base.perplexity()["perplexity"],
               "perplexity_candidate": cand.perplexity()["perplexity"],
               "tokens_per_s_current": speed["current"], "tokens_per_s_candidate": speed["candidate"],
               "slowdown_pct": 100 * (1 - speed["candidate"] / speed["current"]),
               "p99_ms_current": p99["current"], "p99_ms_candidate": p99["candidate"],
               "p99_increase_pct": 100 * (p99["candidate"] / p99["current"] - 1),
               "weight_bytes_current": _model_bytes(manifests["current"]),
               "weight_bytes_candidate": _model_bytes(manifests["candidate"])}
    return CanaryReport(manifests["candidate"].variant, manifests["current"].variant, metrics).judged(thresholds)


def judge(metrics: dict, t: CanaryThresholds) -> list[dict]:
    """The checks of a canary's measurements against thresholds; quality is judged on the
    pessimistic end of its 95% interval, so a noisy measurement cannot pass by luck."""
    m = metrics
    kl_hi = m["kl_divergence_ci95"][1] if "kl_divergence_ci95" in m else m["kl_divergence"] + Z95 * m["kl_divergence_se"]
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
        _check("decode slowdown", m["slowdown_pct"], t.max_slowdown_pct, m["slowdown_pct"] <= t.max_slowdown_pct, "%"),
        _check("P99 latency increase", m["p99_increase_pct"], t.max_p99_increase_pct,
               m["p99_increase_pct"] <= t.max_p99_increase_pct, "%"),
    ]


def _model_bytes(manifest) -> int:
    """Bytes of the model files an artifact ships (graph and external weights)."""
    return sum(info["bytes"] for name, info in manifest.data["files"].items() if name.startswith("model."))


def manifest_frame(folder: str | Path) -> pd.DataFrame:
    """An artifact's manifest as a two-column table (nested fields flattened) for reading in a notebook."""
    data = verify_artifact(folder).data
    rows = []
    for key, value in data.items():
        if key == "files":
            for name, info in value.items():
                rows.append((f"files.{name}", f"{info['bytes']:,} bytes, sha256 {info['sha256'][:16]}…"))
        elif key == "signature":
            for direction, items in value.items():
                rows.append((f"signature.{direction}", ", ".join(i["name"] for i in items[:4])
                             + (f" … ({len(items)} in all)" if len(items) > 4 else "")))
        elif isinstance(value, dict):
            rows.extend((f"{key}.{k}", str(v)) for k, v in value.items())
        else:
            rows.append((key, str(value)))
    return pd.DataFrame(rows, columns=["field", "value"])
