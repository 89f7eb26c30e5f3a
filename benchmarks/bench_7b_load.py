"""Load a 7B-shaped checkpoint as nf4 and int8 on a CPU and compare it with its memory plan.

For each variant, in a fresh child process (so each peak is its own): plan the model
(:func:`edgekit.memory.plan.plan_memory` against this machine), load it through
:func:`edgekit.runtimes.build_runner` (guarded loading; over 1 GiB of checkpoint it
quantizes while reading the memory-mapped shards), then run one forward pass over a short
prompt and a few greedy decode steps with the KV cache. It prints planned vs measured
weight bytes, peak RSS of the load and of the run (anonymous and file-backed apart,
:class:`edgekit.measure.peak_memory.PeakMemory`), the load time and the step times.

The baseline of the same run is the plan itself (planned / measured). ``--from-pretrained``
adds plain ``from_pretrained`` with the same bitsandbytes config (``low_memory=false``) as
a second baseline: it holds the whole bf16 checkpoint while quantizing (18.1 GB peak for
Llama-2-7B here), so it is off by default on a shared machine.

Write the checkpoint first (once, ~13.5 GB):
  flock /tmp/edgekit-7b.lock python benchmarks/make_random_checkpoint.py --preset llama-2-7b --dtype bf16 --out
  edgekit-results/random-llama-2-7b
Run:
  flock /tmp/edgekit-bench.lock nice -n 5 python benchmarks/bench_7b_load.py
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

GB = 1e9


def measure_one(model: str, variant: str, context: int, prompt_tokens: int, decode_steps: int) -> dict:
    import torch

    from edgekit.measure.peak_memory import PeakMemory, release_memory, rss_breakdown
    from edgekit.memory.plan import plan_memory
    from edgekit.runtimes import build_runner

    plan = plan_memory(model, variant.split(":")[0], context=context, device="this-machine")
    release_memory()
    start_rss = rss_breakdown()
    with PeakMemory() as load_peak:
        t0, c0 = time.perf_counter(), time.process_time()
        runner = build_runner(f"{variant}{',' if ':' in variant else ':'}context={context}", model)
        load_s, load_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    measured = runner.weight_bytes()
    ids = torch.arange(100, 100 + prompt_tokens).unsqueeze(0)
    with PeakMemory() as run_peak:
        t0, c0 = time.perf_counter(), time.process_time()
        runner.logits(ids)
        forward_s, forward_cpu_s = time.perf_counter() - t0, time.process_time() - c0
        steps, t0 = [], time.perf_counter()
        for _ in runner.generate_stream(ids, decode_steps + 1):  # prefill + decode_steps decode steps
            steps.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
    return {"variant": variant, "threads": torch.get_num_threads(), "load_avg_1m": os.getloadavg()[0],
            "planned_weight_bytes": plan.weight_bytes, "measured_weight_bytes": measured,
            "planned_total_bytes": plan.total_bytes, "start": start_rss,
            "load_s": load_s, "load_cpu_s": load_cpu_s, "forward_cpu_s": forward_cpu_s,
            "load_peak": load_peak.result, "run_peak": run_peak.result,
            "forward_s": forward_s, "prefill_s": steps[0], "decode_step_s": steps[1:]}


def report(r: dict) -> None:
    lp, rp, st = r["load_peak"], r["run_peak"], r["start"]
    print(f"\n== {r['variant']}  ({r['threads']} threads, load average {r['load_avg_1m']:.1f})")
    print(f"weights   planned {r['planned_weight_bytes'] / GB:6.2f} GB   measured "
          f"{r['measured_weight_bytes'] / GB:6.2f} GB"
          f"   measured/planned {r['measured_weight_bytes'] / r['planned_weight_bytes']:.3f}")
    print(f"load      {r['load_s']:6.1f} s ({r['load_cpu_s']:.0f} s of CPU time)   peak RSS "
          f"{lp['peak_rss_bytes'] / GB:6.2f} GB (anonymous "
          f"{lp['peak_rss_anon_bytes'] / GB:.2f}, file-backed {lp['peak_rss_file_bytes'] / GB:.2f}); "
          f"before loading {st['rss_bytes'] / GB:.2f} GB (anonymous {st.get('rss_anon_bytes', 0) / GB:.2f}, "
          f"file-backed {st.get('rss_file_bytes', 0) / GB:.2f}: the runtime's libraries)")
    print(f"run       peak RSS {rp['peak_rss_bytes'] / GB:6.2f} GB (anonymous {rp['peak_rss_anon_bytes'] / GB:.2f}, "
          f"file-backed {rp['peak_rss_file_bytes'] / GB:.2f});  plan (weights + KV + activations) "
          f"{r['planned_total_bytes'] / GB:.2f} GB on top of the runtime")
    print(f"compute   forward {r['forward_s']:.1f} s ({r['forward_cpu_s']:.0f} s of CPU time), prefill "
          f"{r['prefill_s']:.1f} s, decode steps "
          + ", ".join(f"{s:.1f}" for s in r["decode_step_s"]) + " s"
          + f"  ({len(r['decode_step_s']) / max(sum(r['decode_step_s']), 1e-9):.3f} tokens/s)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="edgekit-results/random-llama-2-7b")
    p.add_argument("--variants", nargs="+", default=["nf4", "int8"])
    p.add_argument("--context", type=int, default=512, help="context the plan (and the load guard) reserves")
    p.add_argument("--prompt-tokens", type=int, default=4)
    p.add_argument("--decode-steps", type=int, default=3)
    p.add_argument("--from-pretrained", action="store_true", help="also load nf4 with plain from_pretrained (~18 GB "
                                                                  "peak)")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:  # child process: measure one variant, print one JSON line
        print("RESULT " + json.dumps(measure_one(args.model, args.one, args.context, args.prompt_tokens,
                                                 args.decode_steps)))
        return
    variants = [v if ":" in v else f"{v}:low_memory=true" for v in args.variants]
    if args.from_pretrained:
        variants.append("nf4:low_memory=false")
    for variant in variants:
        child = subprocess.run([sys.executable, __file__, "--model", args.model, "--one", variant, "--context",
                                str(args.context), "--prompt-tokens", str(args.prompt_tokens),
                                "--decode-steps", str(args.decode_steps)], capture_output=True, text=True)
        lines = [line for line in child.stdout.splitlines() if line.startswith("RESULT ")]
        if not lines:
            print(f"\n== {variant}: failed\n{child.stderr.strip().splitlines()[-1] if child.stderr.strip() else ''}")
            continue
        report(json.loads(lines[0][len("RESULT "):]))


if __name__ == "__main__":
    main()
