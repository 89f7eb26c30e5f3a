"""The comparison: every variant of one model measured the same way, side by side.

The baseline (fp32 unless told otherwise) runs first and keeps its log-probabilities, so
each variant after it gets KL divergence and top-1 agreement on exactly the same tokens
beside its perplexity delta. They are kept on disk, never beside a variant in memory: whole
while they take at most ``FULL_BASELINE_MAX_BYTES`` (a 7B's 32000-token vocabulary over 16k
tokens is 2.1 GB), otherwise as the baseline's ``BASELINE_TOP_K`` most likely tokens and the
tail's mass (:func:`edgekit.measure.score`'s ``top_k``; a row says which in ``kl_base_top_k``).
Each variant's result is written to the store the moment it finishes; a variant that fails
records its reason in its row and the sweep goes on.
"""
from __future__ import annotations

import hashlib
import json
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

import pandas as pd

from edgekit.data import eval_token_ids, work_dir
from edgekit.errors import EdgekitError, InputError
from edgekit.loading import load_tokenizer, model_revision, resolve_source
from edgekit.measure import EvalSettings, Scores, delta_reading, measure_latency, score
from edgekit.memory import PeakMemory, release_memory
from edgekit.registry import Variant, build_runner
from edgekit.results import Result, ResultStore, new_run_id
from edgekit.storage import held_storage

DEFAULT_VARIANTS = ("fp32", "int8", "nf4", "fp4", "int4-g32", "int4-g128", "int2-g64")
FULL_BASELINE_MAX_BYTES = 2 << 30
# On the default model (vocabulary 4096, ~17% of the mass outside the top 64) a top-256 baseline's KL is
# 6.5% below the full one's (top-64: 16%), the same share for int8, int4-g32 and int2-g64; top-1 is exact.
BASELINE_TOP_K = 256


@dataclass(frozen=True)
class LatencySettings:
    prompt_tokens: int = 32
    new_tokens: int = 32
    runs: int = 5
    warmup: int = 1


def compare(model: str = "default", variants: Iterable[str] = DEFAULT_VARIANTS, eval_text: str = "eval",
            settings: EvalSettings = EvalSettings(), latency: LatencySettings | None = LatencySettings(),
            baseline: str = "fp32", store: ResultStore | None = None,
            on_result: Callable[[Result], None] | None = None, progress: bool = True,
            resume: bool = False, baseline_top_k: int | None | str = "auto") -> list[Result]:
    """Measure ``baseline`` then every variant; returns the results in order (errors included).

    With ``resume`` (and a ``store``), a variant the store already holds as measured for the same
    model weights (revision), eval tokens and settings is taken from the store, not measured again,
    so a comparison that was killed goes on where it stopped. The baseline's scores are kept on
    disk under the work folder, so the variants measured after a resume get KL and top-1 against
    the very same baseline. ``baseline_top_k``: "auto" keeps them whole up to ``FULL_BASELINE_MAX_BYTES``
    and as the top ``BASELINE_TOP_K`` beyond; None always whole; k the top k.
    """
    parsed = [Variant.parse(v) for v in variants]  # fail on a bad name before any work
    base_name = str(Variant.parse(baseline))
    names = [base_name] + [str(v) for v in parsed if str(v) != base_name]
    source = resolve_source(model)
    tokenizer = load_tokenizer(model)
    ids, prompt, run_settings = run_inputs(tokenizer, eval_text, settings, latency, names[0])
    kept_top_k(baseline_top_k, ids, settings, len(tokenizer))  # a bad value fails before any work
    run_id = new_run_id()
    revision = model_revision(str(model))
    base_dir = _baseline_dir(revision, run_settings)
    done = _measured(store, str(model), revision, run_settings) if resume and store is not None else {}
    if names[0] in done and not (base_dir / "sums.npz").is_file():
        del done[names[0]]  # its scores are gone: the baseline is measured again for the others' KL
    base: Scores | None = Scores.load(base_dir) if names[0] in done else None
    results = []
    for name in names:
        if name in done:
            results.append(done[name])
            if on_result:
                on_result(done[name])
            continue
        is_baseline = name == names[0]
        result, scores = measure_variant(str(model), name, source, tokenizer, ids, settings, latency, prompt,
                                         base, is_baseline, run_settings, run_id, revision, progress,
                                         baseline_top_k)
        if is_baseline and scores is not None:
            base = scores
            scores.save(base_dir)
        if store is not None:
            store.add(result)
        results.append(result)
        if on_result:
            on_result(result)
    return results


def run_inputs(tokenizer, eval_text: str, settings: EvalSettings, latency: LatencySettings | None,
               baseline: str) -> tuple:
    """``(ids, prompt, run_settings)``: the eval tokens, the latency prompt and the settings every row of
    one model's comparison on ``eval_text`` carries (the key its resume matches on)."""
    ids = eval_token_ids(tokenizer, eval_text)
    if len(ids) < min(settings.max_tokens or settings.context, settings.context):
        raise InputError(f"the eval text has {len(ids)} tokens, fewer than the context ({settings.context}); "
                         "give a longer text or a shorter context")
    prompt = ids[: latency.prompt_tokens] if latency else None
    run_settings = {**asdict(settings), **({f"latency_{k}": v for k, v in asdict(latency).items()} if latency else {}),
                    "eval_text": eval_text if len(eval_text) < 200 else f"<{len(eval_text)} characters>",
                    "eval_sha256": hashlib.sha256(ids.numpy().tobytes()).hexdigest()[:16],
                    "baseline": baseline}
    return ids, prompt, run_settings


def measure_variant(model: str, name: str, source, tokenizer, ids, settings: EvalSettings,
                    latency: LatencySettings | None, prompt, base: Scores | None, is_baseline: bool,
                    run_settings: dict, run_id: str, revision: str, progress: bool = True,
                    baseline_top_k: int | None | str = "auto") -> tuple[Result, Scores | None]:
    """One cell: variant ``name`` of ``model`` measured on ``ids`` (against ``base`` unless it is the baseline).

    Returns its result, and its scores (None when it failed). A failure is recorded in the result, never
    raised, so the comparison or sweep around it goes on. Shared by :func:`compare` and edgekit.sweep.
    """
    result = Result(model=model, variant=name, settings=run_settings, run_id=run_id, model_revision=revision)
    scores = None
    try:
        top_k = kept_top_k(baseline_top_k, ids, settings, len(tokenizer)) if is_baseline else None
        result.metrics, scores = _measure_one(name, source, tokenizer, ids, settings, latency, prompt,
                                              base, is_baseline, progress, top_k)
    except EdgekitError as exc:
        result.status, result.error = "error", str(exc)
    except Exception as exc:  # one variant's failure must not end the sweep
        result.status, result.error = "error", f"{type(exc).__name__}: {exc}"
        result.metrics = {"traceback": traceback.format_exc(limit=4)}
    return result, scores


def kept_top_k(baseline_top_k: int | None | str, ids, settings: EvalSettings, vocab: int) -> int | None:
    """How many log-probabilities a token of the baseline keeps (None: all) under ``baseline_top_k``."""
    if baseline_top_k != "auto":
        if baseline_top_k is not None and not isinstance(baseline_top_k, int):
            raise InputError(f"baseline_top_k={baseline_top_k!r}; give 'auto', None (keep all) or a number of tokens")
        return baseline_top_k
    scored = min(len(ids), settings.max_tokens or len(ids))  # at most: every token but the first is scored once
    return None if scored * vocab * 4 <= FULL_BASELINE_MAX_BYTES else BASELINE_TOP_K


def _baseline_dir(revision: str, run_settings: dict) -> Path:
    """Where a baseline's scores are kept: one folder per model revision, eval tokens and settings."""
    key = hashlib.sha256(json.dumps([revision, run_settings], sort_keys=True).encode()).hexdigest()[:16]
    return work_dir() / "baselines" / key


def _measured(store: ResultStore, model: str, revision: str, run_settings: dict) -> dict[str, Result]:
    """The variants ``store`` holds as measured (status ok) for these weights, tokens and settings; newest wins."""
    same = json.loads(json.dumps(run_settings, default=str))
    return {r.variant: r for r in store.results(model=model, kind="compare")
            if r.status == "ok" and r.model_revision == revision and r.settings == same}


def _measure_one(name, source, tokenizer, ids, settings, latency, prompt, base, is_baseline, progress, top_k):
    release_memory()
    with PeakMemory() as peak:
        start = time.perf_counter()
        runner = build_runner(name, source, tokenizer)
        load_s = time.perf_counter() - start
        try:
            start = time.perf_counter()
            scores = score(runner, ids, settings, baseline=None if is_baseline else base,
                           keep_logprobs=is_baseline, progress=progress, top_k=top_k)
            eval_s = time.perf_counter() - start
            metrics = {**scores.perplexity(), "load_s": load_s, "eval_s": eval_s,
                       "weight_bytes": runner.weight_bytes(), **held_storage(runner, str(source))}
            if is_baseline:
                metrics.update(delta_ppl_pct=0.0, delta_ppl_pct_ci95=[0.0, 0.0], kl_divergence=0.0,
                               kl_divergence_se=0.0, top1_agreement=1.0, top1_agreement_se=0.0,
                               kl_base_top_k=top_k)
            elif base is not None:
                metrics.update(scores.against(base))
            if latency:
                metrics.update(measure_latency(runner, prompt, latency.new_tokens, latency.runs,
                                               latency.warmup, progress))
        finally:
            runner.close()
            del runner
    metrics.update(peak.result)
    return metrics, scores


SUMMARY_COLUMNS = {
    "variant": "variant", "perplexity": "ppl", "delta_ppl_pct": "Δppl %", "delta_ppl_pct_ci95": "Δppl 95% CI",
    "delta_ppl_reading": "Δppl reading", "kl_divergence": "KL", "kl_divergence_se": "KL ±se",
    "top1_agreement": "top-1", "top1_agreement_se": "top-1 ±se",
    "weight_bytes": "weights MB", "bits_per_weight": "bits/w", "bits_per_weight_embeddings": "emb bits/w",
    "grid_aligned": "on base grid", "peak_rss_bytes": "peak RSS MB", "ttft_ms": "TTFT ms",
    "decode_tokens_per_s": "tok/s", "latency_ms_p50": "p50 ms", "latency_ms_p95": "p95 ms",
    "latency_ms_p99": "p99 ms", "latency_indicative": "indicative", "error": "error",
}


def summary_frame(results: list[Result]) -> pd.DataFrame:
    """The comparison table: quality with its uncertainty beside bytes and latency.

    "Δppl reading" says what the interval allows (:func:`edgekit.measure.delta_reading`): a variant
    below its baseline beyond its interval is noise of the text, not a better model; "indicative" lists
    the latency percentiles too few samples pin down (:func:`edgekit.measure.percentiles_indicative`)."""
    rows = []
    for r in results:
        row = {"variant": r.variant, **{k: v for k, v in r.metrics.items() if k in SUMMARY_COLUMNS}, "error": r.error}
        for key in ("weight_bytes", "peak_rss_bytes"):
            if row.get(key) is not None:
                row[key] = row[key] / 1e6
        if row.get("delta_ppl_pct_ci95"):
            lo, hi = row["delta_ppl_pct_ci95"]
            row["delta_ppl_pct_ci95"] = f"[{lo:+.2f}, {hi:+.2f}]"
            if lo == hi == 0:
                row["delta_ppl_reading"] = "baseline"
            else:  # rows stored before the reading existed get it from their interval
                row.setdefault("delta_ppl_reading", delta_reading(lo, hi))
        if row.get("grid_aligned") and r.metrics.get("delta_ppl_pct_ci95") != [0.0, 0.0]:
            row["grid_aligned"] = "yes: understates its error"  # its scheme reproduces the baseline's grid
        if "latency_indicative" in row:
            row["latency_indicative"] = ", ".join(row["latency_indicative"]) or "-"
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame = frame[[c for c in SUMMARY_COLUMNS if c in frame.columns]].rename(columns=SUMMARY_COLUMNS)
    if "error" in frame and frame["error"].isna().all():
        frame = frame.drop(columns="error")
    return frame


COMPARE_JSON_KEYS = ("variant", "status", "error", "perplexity", "perplexity_ci95", "delta_ppl_pct",
                     "delta_ppl_pct_ci95", "kl_divergence", "kl_divergence_se", "top1_agreement",
                     "top1_agreement_se", "weight_bytes", "peak_rss_bytes", "peak_rss_anon_bytes",
                     "peak_rss_file_bytes", "ttft_ms", "decode_tokens_per_s", "latency_ms_p50", "latency_ms_p95",
                     "latency_ms_p99", "scored_tokens", "windows", "load_s", "eval_s",
                     "delta_ppl_pct_ci95_bootstrap", "kl_divergence_ci95_bootstrap", "top1_agreement_ci95_bootstrap",
                     "kl_base_top_k", "bits_per_weight", "bits_per_weight_embeddings", "storage_types", "grid_aligned")


def results_json(results: list[Result]) -> list[dict]:
    """One object per variant with the comparison's public keys (missing values are null)."""
    out = []
    for r in results:
        flat = {"variant": r.variant, "status": r.status, "error": r.error, **r.metrics}
        out.append({k: flat.get(k) for k in COMPARE_JSON_KEYS}
                   | {"settings": r.settings, "run_id": r.run_id, "model_revision": r.model_revision})
    return out
