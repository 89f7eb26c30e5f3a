"""The sweep: models x variants x eval texts, one Ray task per cell, on one machine or a cluster.

Each (model, variant, text) cell is one Ray task that measures the variant exactly as
:func:`edgekit.workflows.compare.compare` does (the same :func:`edgekit.workflows.compare.measure_variant`), so a
sweep's rows are comparison rows: ``compare --resume`` and a rerun of the sweep both skip
what the store already holds. Following Ray's guides ("Tasks", "Fault tolerance",
"Specifying task resources"):

- **Resources from the planner.** Every task declares the memory its plan needs
  (:func:`edgekit.memory.plan.plan_memory`: weights, KV cache, activations, the load's own peak) and
  ``num_gpus=1`` for a ``device=cuda`` variant, so Ray never places two loads on a node that
  cannot hold both. A cell that fits on no node of the cluster is refused before any task
  starts, with the planner's reason, and recorded as an error row.
- **Baselines once.** Each (model, text) baseline is one task with two returns, its result
  and its scores (log-probabilities included); the scores stay in Ray's object store and
  every variant task of that model and text takes them as an argument, so KL and top-1 use
  one baseline that nobody recomputes. The driver also keeps them on its disk, where
  ``compare --resume`` and the next sweep find them.
- **Tasks paired the same way.** With ``tasks`` (:class:`edgekit.workflows.tasks.TaskRun`) every cell also
  answers the lm-eval tasks; each variant task takes the baseline's result as an argument (Ray hands it
  over when the baseline lands, or the store's row on a resume) and pairs its answers against it, so the
  rows carry the same per-task columns as ``compare --tasks``.
- **Nothing lost, nothing twice.** Workers return results and never touch the driver's disk;
  the driver writes each finished cell to the store as it arrives. A worker that dies is
  retried by Ray (``max_retries``); a cell that still fails records its reason and the others
  go on.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable, Iterable

import numpy as np
import torch
from tqdm.auto import tqdm

from edgekit.core.errors import InputError, PlanError
from edgekit.measure.quality import EvalSettings, Scores
from edgekit.measure.store import Result, ResultStore, new_run_id
from edgekit.memory.guard import refusal
from edgekit.memory.plan import plan_memory
from edgekit.memory.profiles import DeviceProfile
from edgekit.models.load import load_tokenizer, model_config, model_revision, resolve_source
from edgekit.variants.registry import Variant
from edgekit.workflows.compare import (
    DEFAULT_VARIANTS,
    LatencySettings,
    _baseline_dir,
    _measured,
    measure_variant,
    run_inputs,
)

if TYPE_CHECKING:  # task scoring imports lm-eval; only a sweep that asks for tasks pays for it (in its workers)
    from edgekit.workflows.tasks import TaskRun

CELL_TASK_PREFIX = "edgekit-cell"  # a running cell's worker process is titled "ray::edgekit-cell <model> <variant>"


@dataclass(frozen=True)
class Node:
    """What a Ray node offers a cell: its ``memory`` resource (bytes) and GPUs."""

    node_id: str
    address: str
    memory_bytes: int
    gpus: float


@dataclass
class Cell:
    model: str
    variant: str
    eval_text: str
    is_baseline: bool
    run_settings: dict
    revision: str
    memory_bytes: int = 0
    num_gpus: float = 0
    refused: str | None = None


def _ray():
    try:
        import ray
    except ImportError:
        raise InputError("edgekit sweep needs Ray: pip install 'edgekit[cluster]'") from None
    return ray


def cluster_nodes() -> list[Node]:
    """The alive nodes of the connected Ray cluster."""
    return [Node(n["NodeID"], n.get("NodeManagerAddress", "?"), int(n["Resources"].get("memory", 0)),
                 float(n["Resources"].get("GPU", 0)))
            for n in _ray().nodes() if n.get("Alive")]


def plan_cell(model: str, variant: str, settings: EvalSettings, latency: LatencySettings | None,
              nodes: list[Node]) -> tuple[int, float, str | None]:
    """``(memory_bytes, num_gpus, refusal)`` of one cell on ``nodes``: the memory its plan needs (load
    peak included) at the eval context and batch, and why no node can hold it (None when one can)."""
    parsed = Variant.parse(variant)
    num_gpus = 1.0 if str(parsed.option("device", "cpu")).startswith("cuda") else 0.0
    candidates = [n for n in nodes if n.gpus >= num_gpus] if num_gpus else list(nodes)
    if not candidates:
        return 0, num_gpus, (f"refusing to run {model} as {variant}: it needs a GPU and no node of the Ray "
                             "cluster has one; join a cluster with GPU nodes (--address) or drop device=cuda")
    context = int(parsed.option("context", max(settings.context,
                                               latency.prompt_tokens + latency.new_tokens if latency else 0)))
    largest = max(candidates, key=lambda n: n.memory_bytes)
    # the host side of the plan on the roomiest node (a CUDA cell's GPU memory is the worker's guard's to check)
    profile = DeviceProfile(f"the largest Ray node ({largest.address})", "cpu", largest.memory_bytes,
                            description="a Ray node's memory resource")
    plan = plan_memory(model_config(model), parsed, context=context, batch=settings.batch_size,
                       device=profile)
    need = max(plan.total_bytes, plan.peak_bytes)
    if not (plan.fits and plan.peak_bytes <= plan.budget_bytes):
        return need, num_gpus, refusal(parsed, model, plan, what="run")
    return need, num_gpus, None


def _cell_task(model: str, variant: str, ids, prompt, settings: EvalSettings, latency: LatencySettings | None,
               run_settings: dict, run_id: str, revision: str, base: Scores | None, is_baseline: bool,
               tasks: TaskRun | None = None, base_result: Result | None = None):
    """One cell on a Ray worker: resolve the model there, measure, return the result (and a baseline's scores).
    With ``tasks``, its answers are paired against those ``base_result`` (the baseline's row) holds."""
    import ray

    torch.set_num_threads(max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))))
    tokenizer = load_tokenizer(model)
    if tasks is not None:  # a copy per cell: the baseline's answers, never another cell's
        tasks = replace(tasks, baseline=tasks.answers_from(base_result.metrics) if base_result else {})
    result, scores = measure_variant(model, variant, resolve_source(model), tokenizer, ids, settings, latency,
                                     prompt, base, is_baseline, run_settings, run_id, revision, progress=False,
                                     tasks=tasks)
    result.environment = {**result.environment, "worker_pid": os.getpid(),
                          "ray_node_id": ray.get_runtime_context().get_node_id()}
    return (result, scores) if is_baseline else result


def run_sweep(models: Iterable[str] = ("default",), variants: Iterable[str] = DEFAULT_VARIANTS,
              eval_texts: Iterable[str] = ("eval",), settings: EvalSettings = EvalSettings(),
              latency: LatencySettings | None = LatencySettings(), baseline: str = "fp32",
              store: ResultStore | None = None, address: str | None = None, num_cpus: int | None = None,
              cpus_per_cell: float = 1, max_retries: int = 2, resume: bool = True, progress: bool = True,
              on_result: Callable[[Result], None] | None = None, tasks: TaskRun | None = None) -> list[Result]:
    """Measure every (model, variant, text) cell as a Ray task; returns the results in cell order.

    ``address`` joins a running cluster ("auto", "ray://head:10001", "10.0.0.5:6379"); without it a
    Ray already initialised in this process is used, else a local cluster of ``num_cpus`` CPUs starts
    and stops with the sweep. Each cell's row goes to ``store`` (default: the work folder's) as it
    arrives; with ``resume`` the cells the store already holds for the same weights, text and
    settings are not measured again. A cell Ray cannot finish after ``max_retries`` worker deaths
    records why. ``tasks``: lm-eval tasks every cell also answers, paired against its model's baseline (as
    :func:`edgekit.workflows.compare.compare` does with them).
    """
    ray = _ray()
    models, texts = [str(m) for m in models], [str(t) for t in eval_texts]
    parsed = [Variant.parse(v) for v in variants]  # fail on a bad name before any work
    base_name = str(Variant.parse(baseline))
    names = [base_name] + [str(v) for v in parsed if str(v) != base_name]
    if not models or not texts:
        raise InputError("a sweep needs at least one model and one eval text")
    if cpus_per_cell <= 0 or max_retries < 0:
        raise InputError(f"cpus_per_cell={cpus_per_cell} must be positive and max_retries={max_retries} at least 0")
    store = store if store is not None else ResultStore()
    run_id = new_run_id()

    # the driver's part: tokens, settings and what the store already holds, for every (model, text)
    groups = []  # (model, text, ids, prompt, run_settings, revision, done)
    for model in models:
        tokenizer = load_tokenizer(model)
        revision = model_revision(model)
        for text in texts:
            ids, prompt, run_settings = run_inputs(tokenizer, text, settings, latency, base_name)
            if tasks is not None:
                run_settings = {**run_settings, **tasks.settings()}
            done = _measured(store, model, revision, run_settings) if resume else {}
            base_scores = _baseline_dir(resolve_source(model), revision, run_settings) / "sums.npz"
            if base_name in done and len(done) < len(names) and not base_scores.is_file():
                del done[base_name]  # its scores are gone: measured again for the others' KL
            groups.append((model, text, ids, prompt, run_settings, revision, done))

    if all(name in done for *_, done in groups for name in names):  # a rerun: nothing to measure, no cluster
        results = [done[name] for *_, done in groups for name in names]
        for result in tqdm(results, desc="sweep", unit="cell", disable=not progress):
            if on_result:
                on_result(result)
        return results
    started = False
    try:
        if address is not None:
            ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
        elif not ray.is_initialized():
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
            started = True
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"join the Ray cluster at {address!r}" if address else "start a local Ray cluster"
        raise InputError(f"could not {where} ({_first_line(exc)}); check the address (ray status on the head "
                         "node prints it) or leave --address out for a local cluster") from None
    try:
        return _run(ray, groups, names, settings, latency, store, run_id, cpus_per_cell, max_retries,
                    progress, on_result, tasks)
    finally:
        if started:
            ray.shutdown()


def _run(ray, groups, names, settings, latency, store, run_id, cpus_per_cell, max_retries, progress, on_result,
         tasks=None):
    nodes = cluster_nodes()
    plans = {}  # (model, variant) -> (memory, gpus, refusal); planned before any task starts
    for model, *_ in groups:
        for name in names:
            if (model, name) not in plans:
                plans[model, name] = plan_cell(model, name, settings, latency, nodes)
    todo = [(m, n) for m, _, _, _, _, _, done in groups for n in names if n not in done]
    if todo and all(plans[cell][2] for cell in todo):  # nothing could start: say why, write nothing
        raise PlanError(plans[todo[0]][2])
    task = ray.remote(_cell_task)
    ordered: list[tuple[Cell, Result | None]] = []
    pending = {}  # result ref -> (index in ordered, scores ref or None)
    for model, text, ids, prompt, run_settings, revision, done in groups:
        ids_ref = ray.put(ids)
        base_ref = None
        base_result = done.get(names[0])  # the baseline's row (its task answers): the store's, or its task's result
        base_dir = _baseline_dir(resolve_source(model), revision, run_settings)
        for name in names:
            memory, gpus, refused = plans[model, name]
            cell = Cell(model, name, text, name == names[0], run_settings, revision, memory, gpus, refused)
            if name in done:
                ordered.append((cell, done[name]))
                continue
            if refused:
                ordered.append((cell, _error(cell, run_id, refused, {"refused_by_plan": True})))
                continue
            if not cell.is_baseline and base_ref is None and names[0] in done:
                base = Scores.load(base_dir)
                base_ref = ray.put(replace(base, logprobs=None if base.logprobs is None
                                           else np.asarray(base.logprobs)))
            options = dict(num_cpus=cpus_per_cell, memory=max(memory, 1), num_gpus=gpus, max_retries=max_retries,
                           name=f"{CELL_TASK_PREFIX} {model} {name} {text}"[:200])
            if cell.is_baseline:
                result_ref, base_ref = task.options(num_returns=2, **options).remote(
                    model, name, ids_ref, prompt, settings, latency, run_settings, run_id, revision, None, True, tasks)
                pending[result_ref] = (len(ordered), base_ref)
                base_result = result_ref
            else:
                result_ref = task.options(**options).remote(
                    model, name, ids_ref, prompt, settings, latency, run_settings, run_id, revision, base_ref, False,
                    tasks, base_result)
                pending[result_ref] = (len(ordered), None)
            ordered.append((cell, None))

    bar = tqdm(total=len(ordered), desc="sweep", unit="cell", disable=not progress)
    for cell, result in ordered:  # what the store held or the plan refused is done already
        if result is not None:
            if result.status == "error":  # a refusal is recorded like any failed cell
                store.add(result)
            bar.update()
            if on_result:
                on_result(result)
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            index, scores_ref = pending.pop(ready[0])
            cell = ordered[index][0]
            try:
                result = ray.get(ready[0])
                if scores_ref is not None and result.status == "ok":
                    ray.get(scores_ref).save(_baseline_dir(resolve_source(cell.model), cell.revision,
                                                            cell.run_settings))
            except ray.exceptions.RayError as exc:  # the worker died max_retries + 1 times, or its input did
                result = _error(cell, run_id, f"{CELL_TASK_PREFIX} {cell.model} {cell.variant} failed after "
                                              f"{max_retries} retries: {_first_line(exc)}")
            store.add(result)
            ordered[index] = (cell, result)
            bar.update()
            bar.set_postfix_str(f"{cell.model} {cell.variant}: {result.status}", refresh=False)
            if on_result:
                on_result(result)
    finally:
        bar.close()
        for ref in pending:  # interrupted: nothing left running on the cluster
            ray.cancel(ref, force=True)
    return [result for _, result in ordered]


def _error(cell: Cell, run_id: str, reason: str, metrics: dict | None = None) -> Result:
    return Result(model=cell.model, variant=cell.variant, settings=cell.run_settings, run_id=run_id,
                  model_revision=cell.revision, status="error", error=reason, metrics=metrics or {})


def _first_line(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:500]


