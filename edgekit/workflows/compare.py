"""The comparison: every variant of one model measured the same way, side by side.

The baseline (fp32 unless told otherwise) runs first and keeps its log-probabilities, so
each variant after it gets KL divergence and top-1 agreement on exactly the same tokens
beside its perplexity delta. They are kept on disk, never beside a variant in memory: whole
while they take at most ``FULL_BASELINE_MAX_BYTES`` (a 7B's 32000-token vocabulary over 16k
tokens is 2.1 GB), otherwise as the baseline's ``BASELINE_TOP_K`` most likely tokens and the
tail's mass (:func:`edgekit.measure.quality.score`'s ``top_k``; a row says which in ``kl_base_top_k``).
Each variant's result is written to the store the moment it finishes; a variant that fails
records its reason in its row and the sweep goes on.

Speed follows the protocol of :mod:`edgekit.measure.speed`. Each variant's cold start (its first call after the
load) is timed before it is scored. When the variants' weights fit in memory together (their planned
weights, ``INTERLEAVE_HEADROOM`` times over, within ``INTERLEAVE_MEMORY_SHARE`` of the memory available
now) they are loaded again after scoring, all at once, and timed in interleaved rounds, so every row's
ratio to the baseline is paired by round; their rows are written once those rounds end. Otherwise each
variant is timed back to back while it is loaded, and its row says ``speed_protocol: per-variant``.
Peak memory is measured while each variant is scored alone, never with the others loaded. Every row
also carries its roofline (:mod:`edgekit.measure.roofline`): bytes moved per decoded token against the
triad bandwidth measured on the threads the runs use, and a verdict.
"""
from __future__ import annotations

import hashlib
import json
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

import pandas as pd
import psutil
import torch

from edgekit.core.errors import EdgekitError, InputError
from edgekit.core.numbers import sig
from edgekit.core.paths import bos_token_id, cache_key, eval_token_ids, work_dir
from edgekit.measure import roofline, speed
from edgekit.measure.paired import kl_flip_relation
from edgekit.measure.peak_memory import PeakMemory, release_memory
from edgekit.measure.quality import EvalSettings, Scores, score
from edgekit.measure.stats import delta_reading
from edgekit.measure.storage import held_storage
from edgekit.measure.store import Result, ResultStore, new_run_id
from edgekit.memory.bytes import kv_cache_bytes, kv_cache_dtype, weight_bytes
from edgekit.models.config import parameter_count
from edgekit.models.load import load_tokenizer, model_config, model_revision, resolve_source
from edgekit.runtimes import build_runner
from edgekit.variants.registry import Variant

if TYPE_CHECKING:  # task scoring imports lm-eval; only a run that asks for tasks pays for it
    from edgekit.workflows.tasks import TaskRun

DEFAULT_VARIANTS = ("fp32", "int8", "nf4", "fp4", "int4-g32", "int4-g128", "int2-g64")
FULL_BASELINE_MAX_BYTES = 2 << 30
# On the default model (vocabulary 4096, ~17% of the mass outside the top 64) a top-256 baseline's KL is
# 6.5% below the full one's (top-64: 16%), the same share for int8, int4-g32 and int2-g64; top-1 is exact.
BASELINE_TOP_K = 256
INTERLEAVE_HEADROOM = 2        # a loaded runner holds its weights and working memory: twice its weights
INTERLEAVE_MEMORY_SHARE = 0.5  # of the memory available when the comparison starts


@dataclass(frozen=True)
class LatencySettings:
    """The speed protocol's settings (:mod:`edgekit.measure.speed`): ``runs`` repetitions of ``new_tokens`` each."""

    prompt_tokens: int = 32
    new_tokens: int = speed.NEW_TOKENS
    runs: int = speed.REPETITIONS
    warmup: int = 1


def compare(model: str = "default", variants: Iterable[str] = DEFAULT_VARIANTS, eval_text: str = "eval",
            settings: EvalSettings = EvalSettings(), latency: LatencySettings | None = LatencySettings(),
            baseline: str = "fp32", store: ResultStore | None = None,
            on_result: Callable[[Result], None] | None = None, progress: bool = True,
            resume: bool = False, baseline_top_k: int | None | str = "auto",
            tasks: TaskRun | None = None) -> list[Result]:
    """Measure ``baseline`` then every variant; returns the results in order (errors included).

    With ``resume`` (and a ``store``), a variant the store already holds as measured for the same
    model weights (revision), eval tokens and settings is taken from the store, not measured again,
    so a comparison that was killed goes on where it stopped. The baseline's scores are kept on
    disk under the work folder, so the variants measured after a resume get KL and top-1 against
    the very same baseline. ``baseline_top_k``: "auto" keeps them whole up to ``FULL_BASELINE_MAX_BYTES``
    and as the top ``BASELINE_TOP_K`` beyond; None always whole; k the top k. ``tasks``: lm-eval tasks
    every variant also answers, paired item by item against the baseline's answers
    (:class:`edgekit.workflows.tasks.TaskRun`).
    """
    parsed = [Variant.parse(v) for v in variants]  # fail on a bad name before any work
    base_name = str(Variant.parse(baseline))
    names = [base_name] + [str(v) for v in parsed if str(v) != base_name]
    source = resolve_source(model)
    tokenizer = load_tokenizer(model)
    ids, prompt, run_settings = run_inputs(tokenizer, eval_text, settings, latency, names[0])
    if tasks is not None:
        run_settings = {**run_settings, **tasks.settings()}
    kept_top_k(baseline_top_k, ids, settings, len(tokenizer))  # a bad value fails before any work
    run_id = new_run_id()
    revision = model_revision(str(model))
    base_dir = _baseline_dir(source, revision, run_settings)
    done = _measured(store, str(model), revision, run_settings) if resume and store is not None else {}
    if names[0] in done and not (base_dir / "sums.npz").is_file():
        del done[names[0]]  # its scores are gone: the baseline is measured again for the others' KL
    base: Scores | None = Scores.load(base_dir) if names[0] in done else None
    if tasks is not None and names[0] in done:
        tasks.baseline = tasks.answers_from(done[names[0]].metrics)
    timed = [n for n in names if n not in done]
    interleave = latency is not None and bool(timed) and fit_together(source, list(dict.fromkeys([names[0], *timed])))
    results, pending = [], []
    for name in names:
        if name in done:
            results.append(done[name])
            if on_result:
                on_result(done[name])
            continue
        is_baseline = name == names[0]
        result, scores = measure_variant(str(model), name, source, tokenizer, ids, settings, latency, prompt,
                                         base, is_baseline, run_settings, run_id, revision, progress,
                                         baseline_top_k, tasks, time_speed=not interleave)
        if is_baseline and scores is not None:
            base = scores
            scores.save(base_dir)
        if latency is not None and not interleave and result.repetitions:
            add_ratio(result, results[0] if results and results[0].variant == names[0] else None, source, latency)
        results.append(result)
        if interleave:
            pending.append(result)
            continue
        if store is not None:
            store.add(result)
        if on_result:
            on_result(result)
    if pending:
        time_interleaved(pending, names[0], source, tokenizer, prompt, latency, progress)
        for result in pending:
            if store is not None:
                store.add(result)
            if on_result:
                on_result(result)
    return results


def fit_together(source: str, names: list[str]) -> bool:
    """Whether the runners of ``names`` can be held at once: their planned weights, ``INTERLEAVE_HEADROOM`` times
    over, within ``INTERLEAVE_MEMORY_SHARE`` of the memory available now (False when one cannot be planned)."""
    if len(names) < 2:
        return False
    try:
        config = model_config(source)
        need = INTERLEAVE_HEADROOM * sum(weight_bytes(config, name) for name in names)
    except EdgekitError:
        return False
    return need <= INTERLEAVE_MEMORY_SHARE * psutil.virtual_memory().available


def time_interleaved(results: list[Result], baseline: str, source: str, tokenizer, prompt, latency: LatencySettings,
                     progress: bool = True) -> None:
    """Load the measured variants of ``results`` again, all at once, time them in interleaved rounds and put
    each one's speed figures (ratio paired by round against ``baseline``, timed in the same rounds even when
    its own row came from the store) and raw repetitions in its result. A variant that fails to load gets the
    error in its row, the others keep their figures; a failure during the rounds is recorded in every row
    they were to time."""
    ok = [r for r in results if r.status == "ok"]
    runners, reps = {}, {}
    try:
        if baseline not in {r.variant for r in results}:  # resumed: the stored baseline is timed again for pairing
            try:
                runners[baseline] = build_runner(baseline, source, tokenizer)
            except Exception:  # noqa: BLE001 - without it the rows get no ratio, nothing else is lost
                pass
        for result in ok:
            try:
                runners[result.variant] = build_runner(result.variant, source, tokenizer)
            except Exception as exc:  # one variant's failure must not end the comparison
                result.status, result.error = "error", f"speed: {type(exc).__name__}: {exc}"
        reps = speed.measure_speed(runners, prompt, latency.new_tokens, latency.runs, latency.warmup,
                                   progress=progress)
    except Exception as exc:  # the quality figures already measured are kept
        for result in ok:
            if result.variant in runners:
                result.status, result.error = "error", f"speed: {type(exc).__name__}: {exc}"
    finally:
        for runner in runners.values():
            runner.close()
        runners.clear()
        release_memory()
    for result in ok:
        if result.variant in reps:
            _speed_row(result, reps[result.variant], reps.get(baseline), True, source, latency)


def add_ratio(result: Result, baseline: Result | None, source: str, latency: LatencySettings) -> None:
    """A per-variant row's ratio to ``baseline`` (its repetitions matched by index: not paired against drift)
    and the roofline verdict that depends on it."""
    if baseline is None or not baseline.repetitions or result is baseline:
        return
    reps = [speed.Repetition(**r) for r in result.repetitions]
    base = [speed.Repetition(**r) for r in baseline.repetitions]
    figures = speed.speed_figures(reps, base, interleaved=False)
    result.metrics.update(speed_ratio=figures["speed_ratio"], speed_ratio_ci95=figures["speed_ratio_ci95"])
    result.metrics.update(_roofline(result.variant, result.metrics, model_config(source), latency))


def _speed_row(result: Result, reps: list, base: list | None, interleaved: bool, source: str,
               latency: LatencySettings) -> None:
    """Put the speed figures of ``reps`` (against ``base``), the roofline and the raw repetitions in ``result``."""
    figures = speed.speed_figures(reps, base if base is not reps else None, interleaved)
    if base is reps:
        figures.update(speed_ratio=1.0, speed_ratio_ci95=[1.0, 1.0])
    result.metrics.update(figures)
    result.repetitions = [r.as_dict() for r in reps]
    result.metrics.update(_roofline(result.variant, result.metrics, model_config(source), latency))


def _roofline(name: str, metrics: dict, config, latency: LatencySettings) -> dict:
    """The roofline columns of a row: bytes moved per token (weights as held + the KV cache read at the mean
    context of the timed tokens) against the triad bandwidth on the threads the runs use."""
    context = latency.prompt_tokens + latency.new_tokens // 2
    try:
        kv = kv_cache_bytes(config, context, dtype=kv_cache_dtype(config, name))
    except EdgekitError:
        kv = kv_cache_bytes(config, context, dtype="fp32")
    ratio_hi = (metrics.get("speed_ratio_ci95") or [None, None])[1]
    threads = torch.get_num_threads()
    return roofline.roofline_figures(metrics["weight_bytes"], kv, parameter_count(config),
                                     metrics["decode_tokens_per_s"], roofline.triad_bandwidth(threads),
                                     roofline.matmul_throughput(threads),
                                     slower_than_baseline=ratio_hi is not None and ratio_hi < 1)


def run_inputs(tokenizer, eval_text: str, settings: EvalSettings, latency: LatencySettings | None,
               baseline: str) -> tuple:
    """``(ids, prompt, run_settings)``: the eval tokens, the latency prompt and the settings every row of
    one model's comparison on ``eval_text`` carries (the key its resume and its kept baseline match on; the BOS
    rule among them, so scores taken without the model's BOS are never reused)."""
    ids = eval_token_ids(tokenizer, eval_text)
    if len(ids) < min(settings.max_tokens or settings.context, settings.context):
        raise InputError(f"the eval text has {len(ids)} tokens, fewer than the context ({settings.context}); "
                         "give a longer text or a shorter context")
    prompt = ids[: latency.prompt_tokens] if latency else None
    run_settings = {**asdict(settings), **({f"latency_{k}": v for k, v in asdict(latency).items()} if latency else {}),
                    "eval_text": eval_text if len(eval_text) < 200 else f"<{len(eval_text)} characters>",
                    "eval_sha256": hashlib.sha256(ids.numpy().tobytes()).hexdigest()[:16],
                    "bos_token_id": bos_token_id(tokenizer), "baseline": baseline}
    return ids, prompt, run_settings


def measure_variant(model: str, name: str, source, tokenizer, ids, settings: EvalSettings,
                    latency: LatencySettings | None, prompt, base: Scores | None, is_baseline: bool,
                    run_settings: dict, run_id: str, revision: str, progress: bool = True,
                    baseline_top_k: int | None | str = "auto", tasks: TaskRun | None = None,
                    time_speed: bool = True) -> tuple[Result, Scores | None]:
    """One cell: variant ``name`` of ``model`` measured on ``ids`` (against ``base`` unless it is the baseline).

    Returns its result, and its scores (None when it failed). A failure is recorded in the result, never
    raised, so the comparison or sweep around it goes on. Shared by :func:`compare` and edgekit.workflows.sweep.
    With ``latency``, the cold start is timed right after the load; with ``time_speed`` too, the speed
    protocol's repetitions run back to back while the variant is loaded (``per-variant``; without it the
    caller times them interleaved with the other variants).
    """
    result = Result(model=model, variant=name, settings=run_settings, run_id=run_id, model_revision=revision)
    scores = None
    try:
        top_k = kept_top_k(baseline_top_k, ids, settings, len(tokenizer)) if is_baseline else None
        result.metrics, scores, reps = _measure_one(name, source, tokenizer, ids, settings, latency, prompt,
                                                    base, is_baseline, progress, top_k, tasks, time_speed)
        if reps:
            _speed_row(result, reps, reps if is_baseline else None, False, source, latency)
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


def _baseline_dir(source: str, revision: str, run_settings: dict) -> Path:
    """Where a baseline's scores are kept: one folder per model (its resolved folder or hub id, so two
    models whose revision is still "unknown" never share one), revision, eval tokens and settings."""
    key = cache_key(source, revision, run_settings)
    return work_dir() / "baselines" / key


def _measured(store: ResultStore, model: str, revision: str, run_settings: dict) -> dict[str, Result]:
    """The variants ``store`` holds as measured (status ok) for these weights, tokens and settings; newest wins."""
    same = json.loads(json.dumps(run_settings, default=str))
    return {r.variant: r for r in store.results(model=model, kind="compare")
            if r.status == "ok" and r.model_revision == revision and r.settings == same}


def _measure_one(name, source, tokenizer, ids, settings, latency, prompt, base, is_baseline, progress, top_k,
                 tasks=None, time_speed=True):
    release_memory()
    reps = None
    with PeakMemory() as peak:
        start = time.perf_counter()
        runner = build_runner(name, source, tokenizer)
        load_s = time.perf_counter() - start
        try:
            cold = speed.cold_start_ms(runner, prompt) if latency else None
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
            if tasks is not None:
                metrics.update(tasks.measure(runner, source, is_baseline))
            if latency:
                metrics["cold_start_ms"] = cold
                if getattr(runner, "compute_path", None):  # how its layers multiply: explains its roofline verdict
                    metrics["compute_path"] = runner.compute_path
            if latency and time_speed:
                reps = speed.measure_speed({name: runner}, prompt, latency.new_tokens, latency.runs, latency.warmup,
                                           progress=progress)[name]
        finally:
            runner.close()
            del runner
    metrics.update(peak.result)
    return metrics, scores, reps


SUMMARY_COLUMNS = {
    "variant": "variant", "perplexity": "ppl", "delta_ppl_pct": "Δppl %", "delta_ppl_pct_ci95": "Δppl 95% CI",
    "delta_ppl_reading": "Δppl reading", "kl_divergence": "KL", "kl_divergence_se": "KL ±se",
    "top1_agreement": "top-1", "top1_agreement_se": "top-1 ±se",
    "weight_bytes": "weights MB", "bits_per_weight": "bits/w", "bits_per_weight_embeddings": "emb bits/w",
    "grid_aligned": "baseline grid", "peak_rss_bytes": "peak RSS MB", "cold_start_ms": "cold ms", "ttft_ms": "TTFT ms",
    "decode_tokens_per_s": "tok/s", "decode_tokens_per_s_ci95": "tok/s 95% CI", "speed_ratio_ci95": "× base [95% CI]",
    "latency_ms_p50": "p50 ms", "latency_ms_p95": "p95 ms",
    "latency_ms_p99": "p99 ms", "latency_indicative": "withheld", "bandwidth_gbps": "GB/s",
    "bandwidth_fraction": "of peak", "bound": "bound", "contended": "contended", "error": "error",
}


GRID_NOTE = "aligned with the baseline's grid: understates its error"


def _on_baseline_grid(result: Result) -> bool:
    """A variant (not the baseline itself) whose block linears are held on the grid the baseline's weights already
    lie on (``grid_aligned``, :mod:`edgekit.measure.storage`): its error against that baseline is smaller than
    against the weights before they were put on that grid."""
    return bool(result.metrics.get("grid_aligned")) and result.variant != result.settings.get("baseline")


def grid_lines(results: list[Result]) -> list[str]:
    """One line per row on the baseline's grid, saying so (the CLI, the report and the narration show them)."""
    return [f"{r.variant}: {GRID_NOTE}" for r in results if _on_baseline_grid(r)]


def summary_frame(results: list[Result]) -> pd.DataFrame:
    """The comparison table: quality with its uncertainty beside bytes and latency.

    "Δppl reading" says what the interval allows (:func:`edgekit.measure.stats.delta_reading`), both sides
    read alike; "withheld" lists
    the latency percentiles too few samples pin down, withheld (:mod:`edgekit.measure.speed`); "contended" marks a row
    whose repetitions ran while other processes took its cores (its speed backs no claim); "baseline grid" says
    :data:`GRID_NOTE` of a row whose scheme reproduces the grid the baseline already lies on."""
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
        if "grid_aligned" in row:
            row["grid_aligned"] = GRID_NOTE if _on_baseline_grid(r) else "-"
        if "latency_indicative" in row:
            row["latency_indicative"] = ", ".join(row["latency_indicative"]) or "-"
        if row.get("decode_tokens_per_s_ci95"):
            row["decode_tokens_per_s_ci95"] = "[{}, {}]".format(*map(sig, row["decode_tokens_per_s_ci95"]))
        if row.get("speed_ratio_ci95"):
            row["speed_ratio_ci95"] = "{:.2f} [{:.2f}, {:.2f}]".format(r.metrics["speed_ratio"],
                                                                       *row["speed_ratio_ci95"])
        for key in ("latency_ms_p95", "latency_ms_p99"):
            if key in row and row[key] is None:
                row[key] = "-"  # withheld: too few samples
        if "contended" in row:
            row["contended"] = {True: "CONTENDED", False: "-"}.get(row["contended"], "?")
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame = frame[[c for c in SUMMARY_COLUMNS if c in frame.columns]].rename(columns=SUMMARY_COLUMNS)
    task_frame = pd.DataFrame([task_columns(r.metrics.get("tasks") or {}) for r in results])
    if not task_frame.empty:  # each task's accuracy, paired Δ [interval], flips both ways, McNemar p; error last
        frame = pd.concat([frame.drop(columns="error", errors="ignore"), task_frame, frame.filter(["error"])], axis=1)
    if "error" in frame and frame["error"].isna().all():
        frame = frame.drop(columns="error")
    return frame


def task_columns(tasks: dict) -> dict:
    """A row's task columns for the table: accuracy, Δaccuracy [95% paired bootstrap], flips right-to-wrong /
    wrong-to-right, McNemar's exact p (blank where there is no baseline to pair with)."""
    out = {}
    for task, m in tasks.items():
        low, high = m.get("task_accuracy_delta_ci95") or (None, None)
        paired = m.get("task_accuracy_delta") is not None
        out[f"{task} acc"] = m.get("task_accuracy")
        out[f"{task} Δacc [95%]"] = (f"{m['task_accuracy_delta']:+.3f} [{low:+.3f}, {high:+.3f}]"
                                     if paired and low is not None else "-")
        out[f"{task} flips -/+"] = f"{m['flips_right_to_wrong']}/{m['flips_wrong_to_right']}" if paired else "-"
        out[f"{task} McNemar p"] = m.get("mcnemar_p")
    return out


def kl_flip_lines(results: list[Result]) -> list[str]:
    """Per task, how the rows' KL from the baseline goes with their flip rate (both ways, per item)."""
    lines = []
    tasks = dict.fromkeys(t for r in results for t in (r.metrics.get("tasks") or {}))
    for task in tasks:
        pairs = [(r.metrics.get("kl_divergence"),
                  (m["flips_right_to_wrong"] + m["flips_wrong_to_right"]) / m["task_items"])
                 for r in results[1:] if r.status == "ok"
                 for m in [(r.metrics.get("tasks") or {}).get(task)]
                 if m and m.get("flips_right_to_wrong") is not None]
        relation = kl_flip_relation(pairs)
        rates = ", ".join(f"KL {kl:.4f}: {rate:.1%}" for kl, rate in sorted(p for p in pairs if p[0] is not None))
        rho = "no rank correlation (fewer than three rows, or no spread)" if relation["spearman"] is None else \
            f"Spearman rho {relation['spearman']:+.2f} over {relation['rows']} rows (p {relation['p']:.2g})"
        lines.append(f"{task}: flip rate against KL: {rho}; {rates or 'no paired rows'}")
    return lines


COMPARE_JSON_KEYS = ("variant", "status", "error", "perplexity", "perplexity_ci95", "delta_ppl_pct",
                     "delta_ppl_pct_ci95", "kl_divergence", "kl_divergence_se", "top1_agreement",
                     "top1_agreement_se", "weight_bytes", "peak_rss_bytes", "peak_rss_anon_bytes",
                     "peak_rss_file_bytes", "ttft_ms", "decode_tokens_per_s", "latency_ms_p50", "latency_ms_p95",
                     "latency_ms_p99", "scored_tokens", "windows", "load_s", "eval_s",
                     "delta_ppl_pct_ci95_bootstrap", "kl_divergence_ci95_bootstrap", "top1_agreement_ci95_bootstrap",
                     "kl_base_top_k", "decode_tokens_per_s_ci95", "ttft_ms_ci95", "speed_ratio", "speed_ratio_ci95",
                     "cold_start_ms", "repetitions", "contended", "contended_repetitions", "speed_protocol",
                     "speed_ci_coverage", "latency_samples", "latency_ms_p95_ci95", "latency_ms_p99_ci95",
                     "bytes_per_token", "bandwidth_gbps", "bandwidth_fraction", "peak_bandwidth_gbps",
                     "compute_fraction", "bound", "tasks", "bits_per_weight",
                     "bits_per_weight_embeddings", "storage_types", "grid_aligned")


def results_json(results: list[Result]) -> list[dict]:
    """One object per variant with the comparison's public keys (missing values are null)."""
    out = []
    for r in results:
        flat = {"variant": r.variant, "status": r.status, "error": r.error, **r.metrics}
        out.append({k: flat.get(k) for k in COMPARE_JSON_KEYS}
                   | {"settings": r.settings, "run_id": r.run_id, "model_revision": r.model_revision})
    return out
