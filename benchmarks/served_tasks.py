"""A served artifact scored by lm-eval's ``local-completions`` against the direct backend, end to end.

Exports ``--variant`` of ``--model`` into an artifact folder, starts ``python -m edgekit serve`` on it in a
child process, waits for ``/health/ready``, scores the shipped loglikelihood tasks (or the first ``--limit``
items) through lm-eval's ``local-completions`` (``/v1/completions`` with ``logprobs`` and ``echo``), scores
them again with ``--model edgekit`` on the same artifact, and prints per task the items compared and the
items whose correctness differs (the issue asks: at most one). A quality check, not a timing:

  python benchmarks/served_tasks.py --model smollm2-135m --variant onnx-int4-g32 --out /tmp/served
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import httpx
from lm_eval import simple_evaluate
from lm_eval.models.openai_completions import LocalCompletionsAPI

from edgekit.models.load import resolve_source
from edgekit.runtimes import export_artifact, load_artifact
from edgekit.workflows.tasks import EdgekitLM, load_tasks, shipped_tasks, task_manager


def correctness(results: dict) -> dict:
    """task -> doc id -> right or wrong, from lm-eval's logged samples."""
    return {task: {s["doc_id"]: bool(s["acc"]) for s in samples} for task, samples in results["samples"].items()}


def wait_ready(url: str, server: subprocess.Popen, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"edgekit serve exited with {server.returncode} before it was ready")
        try:
            if httpx.get(url + "/health/ready", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise SystemExit(f"edgekit serve was not ready after {timeout_s:.0f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--variant", default="onnx-int4-g32")
    parser.add_argument("--tasks", default=",".join(shipped_tasks()))
    parser.add_argument("--limit", type=int, default=None, help="the first N items of each task (default: all)")
    parser.add_argument("--out", type=Path, required=True, help="the artifact folder (exported unless intact there)")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args(argv)

    names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    source = resolve_source(args.model)
    if not (args.out / "manifest.json").is_file():
        export_artifact(args.variant, args.model, args.out)
    url = f"http://127.0.0.1:{args.port}"
    server = subprocess.Popen([sys.executable, "-m", "edgekit", "serve", str(args.out), "--port", str(args.port),
                               "--timeout-s", "600"])
    try:
        wait_ready(url, server)
        served_lm = LocalCompletionsAPI(base_url=url + "/v1/completions", model=args.variant,
                                        tokenizer_backend="huggingface", tokenizer=source, max_length=2048)
        served = correctness(simple_evaluate(model=served_lm, tasks=load_tasks(names), limit=args.limit,
                                             bootstrap_iters=0, task_manager=task_manager(names), log_samples=True))
    finally:
        server.terminate()
        server.wait(timeout=60)
    direct_lm = EdgekitLM(model=args.model, runner=load_artifact(args.out))
    direct = correctness(simple_evaluate(model=direct_lm, tasks=load_tasks(names), limit=args.limit,
                                         bootstrap_iters=0, task_manager=task_manager(names), log_samples=True))
    print(f"{args.model} {args.variant}: lm-eval local-completions against `edgekit serve` vs --model edgekit")
    print(f"{'task':<20} {'items':>6} {'differing':>10} {'acc served':>11} {'acc direct':>11}")
    worst = 0
    for task in names:
        a, b = served[task], direct[task]
        differing = [d for d in a if a[d] != b.get(d)]
        worst = max(worst, len(differing))
        print(f"{task:<20} {len(a):>6} {len(differing):>10} {sum(a.values()) / len(a):>11.4f} "
              f"{sum(b.values()) / len(b):>11.4f}" + (f"  differing doc ids: {differing[:20]}" if differing else ""))
    return 0 if worst <= 1 else 1


if __name__ == "__main__":
    raise SystemExit(main())
