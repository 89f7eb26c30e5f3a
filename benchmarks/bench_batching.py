"""Batching under a P99 target: batch size vs throughput and latency, then a dynamic batcher under Poisson load.

Prints the batch-size sweep (generated tokens/s, requests/s, P50/P95/P99 per-request
latency), the largest batch meeting the P99 target, and the dynamic batcher capped there
under a seeded open-loop Poisson load, next to the same load served one request at a time
(max_batch=1, the baseline in the same run): throughput, percentiles, requests over the
target. Results go to the store as kind ``batching``; ``--plot`` saves throughput vs P99.

Usage:
  flock /tmp/edgekit-bench.lock .venv/bin/python benchmarks/bench_batching.py [--variant fp32|--artifact DIR]
"""
from __future__ import annotations

import argparse

import pandas as pd

from edgekit.core.paths import read_split
from edgekit.measure.store import Result, ResultStore
from edgekit.runtimes import build_runner
from edgekit.serve.batching import batch_sweep, generation_batcher, largest_batch_within, poisson_load


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default")
    p.add_argument("--variant", default="fp32")
    p.add_argument("--artifact", default=None, help="an artifact folder instead of --variant")
    p.add_argument("--batch-sizes", default="1,2,4,8,16,32")
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--p99-ms", type=float, default=None, help="P99 target (default: 3x the batch-1 P99)")
    p.add_argument("--requests", type=int, default=120, help="requests in the load test (bounded)")
    p.add_argument("--load", type=float, default=0.5, help="offered rate as a fraction of the capped batch's "
                                                           "requests/s")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="how long the batcher waits for companions")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--store", default=None)
    p.add_argument("--plot", default=None, help="save throughput vs P99 to this PNG")
    args = p.parse_args()

    if args.artifact:
        from edgekit.runtimes import load_artifact
        runner = load_artifact(args.artifact)
    else:
        runner = build_runner(args.variant, args.model)
    store = ResultStore(args.store)
    lines = [l for l in read_split("eval").splitlines() if len(l.split()) >= 4][:64]
    prompts = [runner.tokenizer(l, return_tensors="pt", add_special_tokens=False)["input_ids"] for l in lines]
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    sweep = batch_sweep(runner, prompts, sizes, args.new_tokens, args.repeats)
    target = args.p99_ms or 3 * float(sweep.loc[sweep["batch_size"] == sizes[0], "latency_ms_p99"].iloc[0])
    cap = largest_batch_within(sweep, target, args.max_wait_ms) or 1
    print(f"{runner.name}: {args.new_tokens} new tokens per request, {args.repeats} timed runs per batch size")
    print(sweep.to_string(index=False, float_format=lambda x: f"{x:.1f}"))
    for row in sweep.to_dict("records"):
        store.add(Result(model=args.model, variant=runner.name, kind="batching", metrics=row,
                         settings={"mode": "sweep", "batch_size": row["batch_size"], "new_tokens": args.new_tokens}))
    print(f"P99 target {target:.0f} ms -> largest batch within it: {cap}")

    capped = sweep[sweep["batch_size"] == cap].iloc[0]
    rate = args.load * float(capped["requests_per_s"])
    loads = []
    for max_batch in (1, cap):
        batcher = generation_batcher(runner, max_batch=max_batch, max_wait_ms=args.max_wait_ms)
        payloads = [(prompts[i % len(prompts)], args.new_tokens) for i in range(args.requests)]
        report = poisson_load(batcher, payloads, rate, target, seed=args.seed)
        batcher.close()
        report.pop("answers")
        report["new_tokens"] = args.new_tokens
        loads.append(report)
        store.add(Result(model=args.model, variant=runner.name, kind="batching", metrics=report,
                         settings={"mode": "poisson", "max_batch": max_batch, "max_wait_ms": args.max_wait_ms,
                                   "rate_per_s": rate,
                                   "seed": args.seed, "requests": args.requests}))
    frame = pd.DataFrame(loads)[["max_batch", "offered_rate_per_s", "requests_per_s", "latency_ms_p50",
                                 "latency_ms_p95",
                                 "latency_ms_p99", "missed_target", "mean_batch_size", "batches"]]
    print(f"\nopen-loop Poisson load, {args.requests} requests at {rate:.2f}/s (seed {args.seed}), max wait 10 ms:")
    print(frame.to_string(index=False, float_format=lambda x: f"{x:.1f}"))
    base, best = loads[0], loads[1]
    print(f"dynamic batching (cap {cap}) vs one at a time, same load: P99 {base['latency_ms_p99']:.0f} -> "
          f"{best['latency_ms_p99']:.0f} ms, missed target {base['missed_target']} -> {best['missed_target']}")
    if args.plot:
        from edgekit.ui.plots import plot_throughput_vs_p99

        ax = plot_throughput_vs_p99(sweep, target, pd.DataFrame(loads))
        ax.figure.savefig(args.plot, dpi=96, bbox_inches="tight")
        print(f"plot: {args.plot}")
    runner.close()


if __name__ == "__main__":
    main()
