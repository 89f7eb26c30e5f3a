"""The same cells measured by ``compare`` serially and by ``sweep`` on a local Ray cluster of 1 and 2 workers.

Figures, each with its same-run baseline:

1. **Wall time.** One model's variants (default: fp32 baseline, int8, int4-g32, int4-g128 of the
   default model, no latency runs) measured by :func:`edgekit.workflows.compare.compare` in this process
   (twice: cold, then warm; one torch thread, as each sweep cell has), then by
   :func:`edgekit.workflows.sweep.run_sweep` on a local cluster of 1 and of 2 CPUs (one cell a CPU;
   each sweep twice: cold workers that import torch first, then warm ones). Cluster start-up is
   timed apart.
2. **Ray's overhead per task**: the round trip of an empty task on the same cluster, and, with one
   worker (cells one after another), a cell's wall time beyond what it measured (its load +
   evaluation), averaged over the cells.
3. **Baseline sharing**: the baseline cell's cost, a variant cell's cost when it gets the
   baseline's scores from the object store, what moving those scores costs (put + get), and
   hence what each variant would cost if it had to score the baseline itself.

Run it alone on the machine: ``flock /tmp/edgekit-bench.lock nice -n 5 .venv/bin/python
benchmarks/bench_sweep.py`` (``--quick`` for a short smoke run). Figures are printed, never asserted.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path


def cell_seconds(result) -> float:
    return result.metrics.get("load_s", 0.0) + result.metrics.get("eval_s", 0.0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default")
    p.add_argument("--variants", default="fp32,int8,int4-g32,int4-g128")
    p.add_argument("--max-tokens", type=int, default=1024)
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--quick", action="store_true", help="3 variants, 256 tokens")
    args = p.parse_args()
    if args.quick:
        args.variants, args.max_tokens = "fp32,int8,int4-g32", 256
    os.environ["EDGEKIT_HOME"] = tempfile.mkdtemp(prefix="bench-sweep-")  # fresh baselines and stores

    import numpy as np
    import ray
    import torch

    from edgekit.measure.quality import EvalSettings
    from edgekit.measure.store import ResultStore
    from edgekit.workflows.compare import compare
    from edgekit.workflows.sweep import run_sweep

    torch.set_num_threads(1)  # the serial baseline computes as each sweep cell does: one CPU, one thread
    variants = args.variants.split(",")
    settings = EvalSettings(context=args.context, stride=args.context // 2, max_tokens=args.max_tokens)
    home = Path(os.environ["EDGEKIT_HOME"])
    print(f"{args.model}: {len(variants)} cells ({', '.join(variants)}), {args.max_tokens} tokens, context "
          f"{args.context}, no latency runs; {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
          f"ray {ray.__version__}")

    print()
    for temperature in ("cold", "warm"):  # cold: this process's first loads of each variant's code
        start = time.perf_counter()
        serial = compare(args.model, variants, "eval", settings, latency=None, progress=False,
                         store=ResultStore(home / f"serial-{temperature}.sqlite"))
        serial_s = time.perf_counter() - start
        assert all(r.status == "ok" for r in serial), [r.error for r in serial]
        print(f"compare, serial in this process, {temperature}: {serial_s:7.2f} s wall "
              f"(cells measured {sum(map(cell_seconds, serial)):.2f} s)")
    print("  (the warm serial run is the baseline of 'vs serial' below)")

    rows = []
    for workers in (1, 2):
        start = time.perf_counter()
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        up_s = time.perf_counter() - start
        runs = []
        for temperature in ("cold", "warm"):
            store = ResultStore(home / f"sweep-{workers}-{temperature}.sqlite")
            start = time.perf_counter()
            results = run_sweep([args.model], variants, ["eval"], settings, latency=None, store=store,
                                resume=False, progress=False)
            wall = time.perf_counter() - start
            assert all(r.status == "ok" for r in results), [r.error for r in results]
            runs.append((temperature, wall, results))

        noop = ray.remote(lambda: None)
        ray.get([noop.remote() for _ in range(workers * 2)])  # workers up
        start = time.perf_counter()
        for _ in range(50):
            ray.get(noop.remote())
        noop_ms = (time.perf_counter() - start) / 50 * 1e3
        base = next(r for r in runs[1][2] if r.variant == variants[0])
        from edgekit.measure.quality import Scores
        from edgekit.workflows.compare import _baseline_dir

        scores = Scores.load(_baseline_dir(base.model_revision, base.settings))
        scores.logprobs = None if scores.logprobs is None else np.array(scores.logprobs)  # off the memory map
        start = time.perf_counter()
        ray.get(ray.put(scores))
        move_ms = (time.perf_counter() - start) * 1e3
        size_mb = (scores.logprobs.nbytes if scores.logprobs is not None else 0) / 1e6
        ray.shutdown()
        rows.append((workers, up_s, runs, noop_ms, move_ms, size_mb))

    print("\nsweep (one task a cell, 1 CPU each; the local cluster started once per worker count)")
    print(f"{'workers':>7} {'cluster up s':>12} {'run':>5} {'wall s':>8} {'vs serial':>9} {'overhead/cell ms':>17}"
          f" {'empty task ms':>13}")
    for workers, up_s, runs, noop_ms, _, _ in rows:
        for temperature, wall, results in runs:
            overhead = (wall - sum(map(cell_seconds, results))) / len(results) * 1e3  # cells one after another
            shown = f"{overhead:17.0f}" if workers == 1 else f"{'-':>17}"
            print(f"{workers:>7} {up_s:12.2f} {temperature:>5} {wall:8.2f} {serial_s / wall:8.2f}x {shown}"
                  f" {noop_ms:13.2f}")
    print("  overhead/cell (1 worker, cells one after another): (wall - the cells' own load + evaluation) / cells:"
          " scheduling, the worker's tokenizer load, argument transfer, and on a cold run the worker's imports")

    _, _, runs, _, move_ms, size_mb = rows[-1]
    warm = runs[1][2]
    base_cost = cell_seconds(warm[0])
    per_variant = statistics.mean(cell_seconds(r) for r in warm[1:])
    print(f"\nbaseline sharing (warm 2-worker run): the baseline cell costs {base_cost:.2f} s; a variant cell "
          f"{per_variant:.2f} s with the baseline's scores ({size_mb:.1f} MB of log-probs) from the object store, "
          f"moving them {move_ms:.1f} ms;")
    print(f"  a variant that scored its own baseline would cost about {per_variant + base_cost:.2f} s "
          f"({(per_variant + base_cost) / per_variant:.1f}x); with sharing the baseline is paid once for "
          f"{len(warm) - 1} variants: {(base_cost + per_variant * (len(warm) - 1)) / (len(warm) - 1):.2f} s a variant")


if __name__ == "__main__":
    main()
