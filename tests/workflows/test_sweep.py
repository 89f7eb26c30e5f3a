"""edgekit.workflows.sweep on a real local Ray cluster (2 CPUs): the default model and a tiny random-weight one,
3 variants, one text; a worker killed mid-sweep, Ray's retry, reruns, and the planner's refusals."""
import json
import os
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest

ray = pytest.importorskip("ray")

from edgekit.cli import main  # noqa: E402
from edgekit.measure.quality import EvalSettings  # noqa: E402
from edgekit.measure.store import ResultStore  # noqa: E402
from edgekit.workflows.sweep import CELL_TASK_PREFIX, Node, plan_cell, run_sweep  # noqa: E402
from edgekit.workflows.tasks import TaskRun  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from make_random_checkpoint import write_checkpoint  # noqa: E402

SETTINGS = EvalSettings(context=64, stride=32, max_tokens=256)  # what CLI_SETTINGS give
VARIANTS = ["fp32", "int8", "int4-g32"]
CLI_SETTINGS = ["--context", "64", "--stride", "32", "--max-tokens", "256", "--no-latency"]
TINY = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 4096, "hidden_size": 64,
        "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu",
        "tie_word_embeddings": False, "bos_token_id": 0, "eos_token_id": 0}


@pytest.fixture(scope="module")
def cluster():
    """One local Ray cluster of 2 CPUs for the module; the sweeps below join it (already initialised)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return ["default", str(write_checkpoint(TINY, tmp_path_factory.mktemp("random-llama") / "tiny"))]


@pytest.fixture(scope="module")
def swept(cluster, models, tmp_path_factory):
    """The sweep, with one cell's worker process killed (SIGKILL) while it measures."""
    store = ResultStore(tmp_path_factory.mktemp("sweep") / "results.sqlite")
    out, landed = {}, []  # landed: (result, rows in the store when on_result saw it)
    sweep = threading.Thread(target=lambda: out.update(results=run_sweep(
        models, VARIANTS, ["eval"], SETTINGS, latency=None, store=store, max_retries=2, progress=False,
        on_result=lambda r: landed.append((r, len(store.results()))))))
    sweep.start()
    killed = None
    while sweep.is_alive() and killed is None:
        for proc in psutil.Process().children(recursive=True):  # only the workers of our own cluster
            try:
                title = " ".join(proc.cmdline())
            except psutil.Error:
                continue
            if title.startswith(f"ray::{CELL_TASK_PREFIX} "):
                os.kill(proc.pid, signal.SIGKILL)
                killed = (proc.pid, title.split()[1:4])  # model, variant, text
                break
        time.sleep(0.02)
    sweep.join()
    return out["results"], killed, store, landed


def test_every_cell_lands_once_and_the_killed_cell_is_retried(swept, models):
    results, killed, store, _ = swept
    assert killed is not None, "no cell's worker was seen running"
    rows = store.results()
    assert Counter((r.model, r.variant) for r in rows) == {(m, v): 1 for m in models for v in VARIANTS}
    assert all(r.status == "ok" for r in rows), [r.error for r in rows]
    assert [(r.model, r.variant) for r in results] == [(m, v) for m in models for v in VARIANTS]
    pid, (model, variant, _) = killed
    retried = next(r for r in rows if (r.model, r.variant) == (model, variant))
    assert retried.environment["worker_pid"] != pid  # measured again, by another worker, after the kill
    for model in models:
        by = {r.variant: r.metrics for r in rows if r.model == model}
        assert by["fp32"]["kl_divergence"] == 0 and by["fp32"]["top1_agreement"] == 1
        assert by["int4-g32"]["kl_divergence"] > 0  # against the shared baseline
        assert by["int4-g32"]["weight_bytes"] < by["int8"]["weight_bytes"] < by["fp32"]["weight_bytes"]
        assert all(m["scored_tokens"] == 255 for m in by.values())
    ppl = {r.model: r.metrics["perplexity"] for r in rows if r.variant == "fp32"}
    assert ppl[models[0]] < 200 < ppl[models[1]]  # trained vs random weights: two models, not one twice


def test_each_cell_reaches_on_result_as_it_lands_after_its_row_is_stored(swept):
    """The dashboard's sweep mode draws from on_result: every cell once, each already in the store."""
    results, _, store, landed = swept
    assert sorted((r.model, r.variant) for r, _ in landed) == sorted((r.model, r.variant) for r in results)
    assert [rows for _, rows in landed] == list(range(1, len(results) + 1))  # one new row before each call
    stored = store.results()
    assert [(r.model, r.variant) for r, _ in landed] == [(r.model, r.variant) for r in stored]  # arrival order


def test_rerun_measures_nothing_and_new_cells_reuse_the_kept_baseline(swept, models, tmp_path):
    _, _, store, _ = swept
    before = store.results()
    out = tmp_path / "sweep.json"
    args = ["sweep", "--models", ",".join(models), "--variants", ",".join(VARIANTS), *CLI_SETTINGS,
            "--store", str(store.path), "--json", str(out)]
    assert main(args) == 0
    assert len(store.results()) == len(before)  # nothing measured, nothing written
    rows = json.loads(out.read_text())
    assert [(r["model"], r["variant"]) for r in rows] == [(m, v) for m in models for v in VARIANTS]
    assert {r["run_id"] for r in rows} == {before[0].run_id}

    huge = "int8:context=50000000"
    results = run_sweep(models, [*VARIANTS, "int4-g64", huge], ["eval"], SETTINGS, latency=None, store=store,
                        progress=False)
    assert len(results) == 10
    new = store.results()[len(before):]
    assert Counter((r.model, r.variant) for r in new) == {(m, v): 1 for m in models for v in ("int4-g64", huge)}
    for r in new:  # only the new cells; the refused ones say why, the others were measured on the kept baseline
        if r.variant == huge:
            assert r.status == "error" and r.error.startswith(f"refusing to run {r.model} as {huge}")
        else:
            assert r.status == "ok" and r.metrics["kl_divergence"] > 0, r.error


def test_cells_that_fit_nowhere_are_refused_before_they_start(cluster, tmp_path, capsys):
    small = [Node("n1", "10.0.0.1", 64 * 2**20, 0)]
    memory, gpus, refused = plan_cell("default", "fp32", SETTINGS, None, small)
    assert memory > 64 * 2**20 and gpus == 0 and refused.startswith("refusing to run default as fp32")
    _, gpus, refused = plan_cell("default", "fp32:device=cuda", SETTINGS, None, small)
    assert gpus == 1 and "no node of the Ray cluster has" in refused
    memory, _, refused = plan_cell("default", "int8", SETTINGS, None, [Node("n1", "10.0.0.1", 64 * 2**30, 0)])
    assert refused is None and 0 < memory < 2**30

    store = tmp_path / "r.sqlite"
    huge = "fp32:context=50000000"
    assert main(["sweep", "--variants", huge, "--baseline", huge, *CLI_SETTINGS, "--store", str(store)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("edgekit: error:")]
    assert len(errors) == 1 and "refusing to run default as fp32:context=50000000" in errors[0]
    assert ResultStore(store).results() == []


TASKS = ("edgekit_lastword", "edgekit_nextline")


def test_sweep_tasks_answer_as_compare_does_paired_against_the_baseline(cluster, task_compare, tmp_path, capsys):
    """``sweep --tasks``: the rows carry compare's per-task columns, with the very answers ``compare --tasks`` gave
    (tests/conftest.py), paired against the baseline's answers that Ray hands over; a rerun with one more variant
    pairs it against the baseline's row in the store."""
    _, compared, _ = task_compare
    limit = compared[0]["settings"]["task_limit"]
    store, out = tmp_path / "r.sqlite", tmp_path / "sweep.json"
    args = ["sweep", "--variants", "fp32,int2-g64", *CLI_SETTINGS, "--tasks", ",".join(TASKS), "--task-limit",
            str(limit), "--store", str(store), "--json", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    for task in TASKS:
        assert f"{task} Δacc [95%]" in printed and f"{task} flips -/+" in printed
        assert f"{task}: flip rate against KL: " in printed
    rows = json.loads(out.read_text())
    assert [r["variant"] for r in rows] == ["fp32", "int2-g64"]
    results = run_sweep(["default"], ["fp32", "int2-g64", "int8-g64"], ["eval"], SETTINGS, latency=None,
                        store=ResultStore(store), progress=False, tasks=TaskRun(TASKS, limit))
    assert len(ResultStore(store).results()) == 3  # only int8-g64 measured; fp32 and int2-g64 came from the store
    swept = {**{r["variant"]: r["tasks"] for r in rows}, "int8-g64": results[2].metrics["tasks"]}
    by_compare = {r["variant"]: r["tasks"] for r in compared}
    keys = ("task_correct", "prompt_fingerprint", "task_accuracy", "flips_right_to_wrong", "flips_wrong_to_right",
            "mcnemar_p", "task_items")
    for variant, tasks in swept.items():
        for task in TASKS:
            assert {k: tasks[task][k] for k in keys} == {k: by_compare[variant][task][k] for k in keys}, variant
    assert sum(m["flips_right_to_wrong"] + m["flips_wrong_to_right"] for m in swept["int2-g64"].values()) > 0
