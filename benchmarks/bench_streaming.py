"""Layer streaming with vs without prefetch on a model bigger than its memory budget.

Prints, for each mode, decode tokens/s, seconds per token split into compute and stall
(waiting for weights), the stall fraction, bytes streamed per token and the peak RSS of
the process, and the prefetch speed-up over the no-prefetch baseline measured in the same
run. Results go to the store as kind ``streaming``.

Usage (heavy on the 7B-shaped checkpoint: run once, alone):
  flock /tmp/edgekit-bench.lock nice -n 5 .venv/bin/python benchmarks/bench_streaming.py \\
      --model edgekit-results/random-llama-2-7b --budget-gib 3 --new-tokens 4
"""
from __future__ import annotations

import argparse
import os

import torch

from edgekit.measure.peak_memory import PeakMemory, release_memory, rss_breakdown
from edgekit.measure.store import Result, ResultStore
from edgekit.runtimes.pytorch.streaming import StreamingRunner, stream_device_map, stream_summary


def run_mode(model: str, device_map: dict, prefetch: bool, prompt: torch.Tensor, new_tokens: int) -> dict:
    release_memory()
    with PeakMemory() as peak:
        runner = StreamingRunner(model, device_map, prefetch=prefetch)
        tokens = list(runner.generate_stream(prompt, new_tokens))
        steps = list(runner.steps)
        runner.close()
    figures = stream_summary(steps, new_tokens)
    figures.update(peak.result, tokens=tokens, streamed_layers=len(runner.streamed),
                   step_wall_s=[round(s.wall_s, 3) for s in steps], step_stall_s=[round(s.stall_s, 3) for s in steps])
    return figures


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="edgekit-results/random-llama-2-7b")
    p.add_argument("--budget-gib", type=float, default=3.0, help="host memory the weights may hold")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    p.add_argument("--prompt-tokens", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=4)
    p.add_argument("--store", default=None)
    args = p.parse_args()

    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    budget = int(args.budget_gib * 2**30)
    device_map = stream_device_map(args.model, budget, dtype)
    on_disk = sum(1 for v in device_map.values() if v == "disk")
    print(f"model {args.model}, budget {args.budget_gib} GiB: {on_disk} decoder layers streamed from disk; "
          f"torch threads {torch.get_num_threads()}, {os.cpu_count()} cores")
    prompt = torch.randint(0, 4096, (1, args.prompt_tokens), generator=torch.Generator().manual_seed(0))
    store = ResultStore(args.store)
    rows = {}
    for prefetch in (False, True):
        name = "prefetch" if prefetch else "no-prefetch"
        figures = run_mode(args.model, device_map, prefetch, prompt, args.new_tokens)
        rows[name] = figures
        store.add(Result(model=args.model, variant=f"stream-{args.dtype}-{name}", kind="streaming", metrics=figures,
                         settings={"budget_bytes": budget, "prefetch": prefetch, "new_tokens": args.new_tokens,
                                   "prompt_tokens": args.prompt_tokens, "device_map": device_map}))
        print(f"{name:12s} {figures['decode_tokens_per_s']:.4f} tok/s  {figures['decode_s_per_token']:.2f} s/token "
              f"(compute {figures['compute_s_per_token']:.2f} s, stall {figures['stall_s_per_token']:.2f} s, "
              f"stall fraction {figures['stall_fraction']:.2f})  streamed "
              f"{figures['streamed_bytes_per_token'] / 2**30:.2f} "
              f"GiB/token  peak RSS {figures['peak_rss_bytes'] / 2**30:.2f} GiB "
              f"(anon {figures['peak_rss_anon_bytes'] / 2**30:.2f}, file "
              f"{figures['peak_rss_file_bytes'] / 2**30:.2f})",
              flush=True)
    same = rows["prefetch"]["tokens"] == rows["no-prefetch"]["tokens"]
    gain = rows["prefetch"]["decode_tokens_per_s"] / rows["no-prefetch"]["decode_tokens_per_s"]
    print(f"prefetch speed-up over no-prefetch (same run): {gain:.2f}x; same tokens: {same}; "
          f"RSS now {rss_breakdown()['rss_bytes'] / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
