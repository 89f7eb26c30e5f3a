"""Tuning sweep ("autotuning"): time a runner under each runtime setting, rank, keep the winner.

Follows the ONNX Runtime "Tune performance" guide (threads, graph optimisation level,
I/O binding; for MatMulNBits int4 models the ``accuracy_level`` of the quantized graph)
and the PyTorch CPU performance tuning guide (intra-op threads, ``torch.compile``):
the only way to know which setting is fastest on a device is to measure it there. Each
candidate gets a warm-up generation, then ``runs`` timed repetitions by the speed protocol
(:mod:`edgekit.measure.speed`, back to back: a thread count is process-wide, so two candidates cannot be
held at once); candidates are ranked by P50 decode latency (per-token gap), ties broken by P99.

The fastest is not yet a winner. A setting is named the winner only when its decode tokens/s
interval lies wholly above the default's (``TuningReport.winner``); otherwise the sweep is a tie and
the default stays, whatever the point estimates say (no fixed "10% is noise" constant: the intervals
measured in this sweep decide). A candidate whose repetitions ran contended is not named the winner
unless the caller insists. The winner of an ONNX artifact's sweep is written into its manifest as
``runtime_settings`` with the intervals it won by (``tuning``), which
:func:`edgekit.runtimes.load_artifact` applies whenever the artifact is loaded.

A *factory* turns one candidate's settings (a dict) into a Runner; :func:`ort_factory`
and :func:`torch_factory` build the usual ones.
"""
from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd
import torch

from edgekit.artifacts.manifest import read_manifest, update_manifest
from edgekit.core.errors import EdgekitError, InputError
from edgekit.core.progress import tqdm
from edgekit.measure.peak_memory import release_memory
from edgekit.measure.speed import measure_speed, speed_figures, trusted
from edgekit.measure.store import Result, ResultStore
from edgekit.runtimes import build_runner, cached_manifest, load_artifact

Factory = Callable[[dict], object]
# Manifest runtime_settings keys an ONNX artifact's loader accepts.
ORT_RUNTIME_KEYS = ("intra_op_threads", "graph_optimization_level", "io_binding", "providers")


def grid(**axes: list) -> list[dict]:
    """Every combination of the given setting values: ``grid(threads=[1, 2], compile=[False, True])``."""
    names = list(axes)
    return [dict(zip(names, values)) for values in itertools.product(*(axes[n] for n in names))]


def settings_label(settings: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in settings.items()) or "default"


def rank(table: pd.DataFrame, default: dict | None = None) -> pd.DataFrame:
    """Order candidates fastest first: P50 decode latency, then P99; failed candidates last.

    ``table`` has one row per candidate with ``settings`` (dict), ``latency_ms_p50``,
    ``latency_ms_p99`` and ``error`` (None when it ran). Adds ``rank`` (1 = best) and, when
    the ``default`` candidate is in the table, ``speedup_vs_default`` (default P50 / P50).
    """
    if table.empty:
        raise InputError("the sweep has no candidates; give at least one setting")
    ranked = table.copy()
    if "error" not in ranked:
        ranked["error"] = None
    failed = ranked["error"].notna()
    ranked["_failed"] = failed
    ranked = ranked.sort_values(["_failed", "latency_ms_p50", "latency_ms_p99"], kind="stable").drop(columns="_failed")
    ranked["rank"] = range(1, len(ranked) + 1)
    if default is not None:
        match = ranked[(ranked["settings"].map(lambda s: s == default)) & ranked["error"].isna()]
        if not match.empty:
            base = float(match["latency_ms_p50"].iloc[0])
            ranked["speedup_vs_default"] = base / ranked["latency_ms_p50"]
    return ranked.reset_index(drop=True)


@dataclass
class TuningReport:
    table: pd.DataFrame       # ranked, one row per candidate
    default: dict | None

    @property
    def best(self) -> dict:
        ok = self.table[self.table["error"].isna()]
        if ok.empty:
            raise EdgekitError("every candidate of the sweep failed; see the table's error column")
        return dict(ok["settings"].iloc[0])

    def winner(self, insist: bool = False) -> dict | None:
        """The settings the sweep may name: the fastest when its decode tokens/s interval lies wholly above the
        default's (and it ran uncontended, unless ``insist``); the default when they overlap (a tie); the fastest
        as is without a default in the sweep."""
        best = self.best
        if self.default is None or best == self.default:
            return best
        row, base = self.row(best), self.row(self.default)
        if base is None:
            return best
        return best if separated(row, base) and trusted(row, insist) else self.default

    def row(self, settings: dict) -> dict | None:
        """The figures of the candidate with ``settings`` (None when it is not in the table or failed)."""
        match = self.table[self.table["settings"].map(lambda s: s == settings) & self.table["error"].isna()]
        return None if match.empty else match.iloc[0].to_dict()

    @property
    def gain_over_default(self) -> float:
        """Best P50 speed-up over the default setting measured in the same sweep (NaN without a default)."""
        if "speedup_vs_default" not in self.table:
            return math.nan
        return float(self.table["speedup_vs_default"].iloc[0])


def separated(row: dict, base: dict) -> bool:
    """Whether ``row``'s decode tokens/s interval lies wholly above ``base``'s (rows without intervals: never)."""
    mine, theirs = row.get("decode_tokens_per_s_ci95"), base.get("decode_tokens_per_s_ci95")
    if not isinstance(mine, (list, tuple)) or not isinstance(theirs, (list, tuple)):
        return False
    return mine[0] > theirs[1]


def tune(factory: Factory, candidates: list[dict], prompt_ids: torch.Tensor, *, default: dict | None = None,
         new_tokens: int = 16, runs: int = 5, warmup: int = 1, model: str = "", variant: str = "",
         store: ResultStore | None = None, progress: bool = True) -> TuningReport:
    """Measure every candidate (warm-up, then ``runs`` timed generations) and rank them.

    ``default`` (added to the candidates if absent) is the baseline the best one's gain is
    reported against. A candidate that fails to build or run is recorded with its error and
    ranked last; the others still run. Each candidate's figures are stored as kind
    ``tuning`` the moment it finishes.
    """

    candidates = list(candidates)
    if default is not None and default not in candidates:
        candidates.insert(0, default)
    threads = torch.get_num_threads()
    rows = []
    try:
        for settings in tqdm(candidates, desc="tuning sweep", disable=not progress):
            row = {"settings": settings, "label": settings_label(settings), "error": None}
            runner = None
            try:
                runner = factory(settings)
                reps = measure_speed({row["label"]: runner}, prompt_ids, new_tokens, runs, warmup,
                                     progress=False)[row["label"]]
                row.update(speed_figures(reps, interleaved=False))
            except (EdgekitError, RuntimeError, ValueError) as exc:  # a setting the runtime refuses
                row.update(error=f"{type(exc).__name__}: {exc}", latency_ms_p50=math.inf, latency_ms_p99=math.inf)
            finally:
                if runner is not None:
                    runner.close()
                torch.set_num_threads(threads)
                release_memory()
            rows.append(row)
            if store is not None:
                metrics = {k: v for k, v in row.items() if k not in ("settings", "label", "error")}
                store.add(Result(model=model, variant=variant, kind="tuning", metrics=metrics,
                                 settings={**settings, "new_tokens": new_tokens, "runs": runs, "warmup": warmup},
                                 status="error" if row["error"] else "ok", error=row["error"]))
    finally:
        torch.set_num_threads(threads)
    return TuningReport(rank(pd.DataFrame(rows), default), default)


def ort_factory(artifact_dir: str | Path) -> Factory:
    """Settings (``intra_op_threads``, ``graph_optimization_level``, ``io_binding``, ``providers``) -> the
    artifact's runner. ``accuracy_level`` is baked into a MatMulNBits graph at export, so it
    is swept across artifacts (one per level), not through this factory."""

    def build(settings: dict):
        return load_artifact(artifact_dir, **settings)
    return build


def onnx_variant_factory(variant: str, source: str = "default") -> Factory:
    """Like :func:`ort_factory`, plus ``accuracy_level``: each level is its own artifact of ``variant``
    (``onnx-int4-g32:accuracy_level=1``...), exported once and cached; the other settings are runtime options."""

    def build(settings: dict):
        runtime = {k: v for k, v in settings.items() if k != "accuracy_level"}
        level = settings.get("accuracy_level")
        name = f"{variant}:accuracy_level={level}" if level is not None else variant
        return load_artifact(cached_manifest(name, source), **runtime)
    return build


def torch_factory(variant: str, source: str = "default") -> Factory:
    """Settings ``threads`` (intra-op threads) and ``compile`` (gpt-fast's static KV cache and compiled
    decode step, :meth:`edgekit.models.runner.TorchRunner.compile_decoding`) -> a PyTorch runner.

    The thread count is process-wide in PyTorch; :func:`tune` restores it after each candidate.
    """

    def build(settings: dict):
        unknown = set(settings) - {"threads", "compile"}
        if unknown:
            raise InputError(f"unknown PyTorch setting(s) {', '.join(sorted(unknown))}; use threads and compile")
        if settings.get("threads"):
            torch.set_num_threads(int(settings["threads"]))
        runner = build_runner(variant, source)
        if settings.get("compile"):  # the compile=true option: static KV cache, compiled decode step
            runner.compile_decoding()
        return runner
    return build


def write_best(artifact_dir: str | Path, report: TuningReport, insist: bool = False) -> dict:
    """Record the sweep's winner (:meth:`TuningReport.winner`; the default on a tie) as the artifact's
    ``runtime_settings``, and under ``tuning`` the intervals it was chosen on (files re-verified first);
    returns the settings."""
    winner = report.winner(insist)
    best = {k: v for k, v in winner.items() if k in ORT_RUNTIME_KEYS}
    current = read_manifest(artifact_dir).data.get("runtime_settings") or {}
    settings = {**current, **best}
    chosen = report.row(winner) or {}
    default = report.row(report.default) if report.default is not None else None
    record = {"winner": winner, "fastest": report.best, "tie": winner != report.best,
              "decode_tokens_per_s_ci95": chosen.get("decode_tokens_per_s_ci95"),
              "default": report.default,
              "default_decode_tokens_per_s_ci95": (default or {}).get("decode_tokens_per_s_ci95"),
              "contended": chosen.get("contended")}
    update_manifest(artifact_dir, runtime_settings=settings, tuning=json.loads(json.dumps(record, default=str)))
    return settings
