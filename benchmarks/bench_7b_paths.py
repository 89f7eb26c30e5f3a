"""Every variant family on a 7B-shaped checkpoint: planned vs measured peak RSS, export / load time, decode speed.

For each variant, in a fresh child process (so each peak is its own):

1. **plan** it for this machine (:func:`edgekit.memory.plan.plan_memory`): the planned peak is the larger
   of the steady state and the load's (or export's) own peak, the figure the guard admits by;
2. **export** it, for the runtimes that ship an artifact (``onnx-*``, ``ov-*``, ``gguf-*``), into
   the artifact cache ``edgekit compare`` reads, so a later compare reuses it (an artifact already
   cached, by an earlier compare or run, is reported as cached, with no export time or peak); the
   peak counts helper processes too (llama.cpp's converter runs in one: ``getrusage(RUSAGE_CHILDREN)``);
3. **load** it through :func:`edgekit.runtimes.build_runner` (the guard, then streamed packing,
   layer-wise calibration or the artifact's runtime);
4. **decode**: one forward over a short prompt, then greedy decode steps with the KV cache.

Each finished row is printed and appended to ``--out`` (JSON lines) at once, so a run that dies
keeps every row before it. The baseline of the same run is the plan itself (measured / planned).

Write the checkpoint first (once, ~13.5 GB):
  flock /tmp/edgekit-7b.lock python benchmarks/make_random_checkpoint.py --preset llama-2-7b --dtype bf16 --out
  /tmp/ck7b/llama-2-7b
Run (``gptq-int4-g128`` comes last: its layer-by-layer calibration alone takes over an hour on 2 cores):
  flock /tmp/edgekit-7b.lock python benchmarks/bench_7b_paths.py --model /tmp/ck7b/llama-2-7b
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

GB = 1e9
DEFAULT_VARIANTS = "bf16,int4-g128,onnx-int4-g32,onnx-int8-g128,ov-int4-g128,ov-int8-g128,gguf-q4_0,gptq-int4-g128"


def _children_peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024


def measure_one(model: str, name: str, context: int, prompt_tokens: int, decode_steps: int) -> dict:
    import torch

    from edgekit.measure.peak_memory import PeakMemory, release_memory
    from edgekit.memory.plan import plan_memory
    from edgekit.runtimes import build_runner, cached_artifact
    from edgekit.variants.registry import Variant

    variant = Variant.parse(name)
    plan = plan_memory(model, name.split(":")[0], context=context, device="this-machine")
    row = {"variant": name, "threads": torch.get_num_threads(),
           "planned_peak_bytes": max(plan.total_bytes, plan.peak_bytes),
           "planned_weight_bytes": plan.weight_bytes, "peak_reason": plan.peak_reason}
    if variant.entry.exporter is not None:  # the artifact cache compare reads
        with PeakMemory() as peak:
            t0, started = time.perf_counter(), time.time()
            folder = cached_artifact(variant, model)
            export_s = time.perf_counter() - t0
        if (folder / "manifest.json").stat().st_mtime < started:
            row["export_cached"] = str(folder)
        else:
            row["export_s"] = export_s
            row["export_peak_bytes"] = max(peak.result["peak_rss_bytes"], _children_peak_bytes())
        release_memory()
    loadable = name if variant.family != "pytorch" else f"{name}{',' if ':' in name else ':'}context={context}"
    with PeakMemory() as peak:
        t0 = time.perf_counter()
        runner = build_runner(loadable, model)
        row["load_s"] = time.perf_counter() - t0
    row["load_peak_bytes"] = peak.result["peak_rss_bytes"]
    row["measured_weight_bytes"] = runner.weight_bytes()
    ids = torch.arange(100, 100 + prompt_tokens).unsqueeze(0)
    with PeakMemory() as peak:
        t0 = time.perf_counter()
        runner.logits(ids)
        row["prefill_s"] = time.perf_counter() - t0
        steps, t0 = [], time.perf_counter()
        for _ in runner.generate_stream(ids, decode_steps + 1):  # the first token is a prefill, the rest decode
            steps.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
    row["decode_tokens_per_s"] = decode_steps / max(sum(steps[1:]), 1e-9)
    row["run_peak_bytes"] = peak.result["peak_rss_bytes"]
    row["measured_peak_bytes"] = max(row.get("export_peak_bytes", 0), row["load_peak_bytes"], row["run_peak_bytes"])
    return row


def report(r: dict) -> None:
    export = (f"export {r['export_s']:7.1f} s, peak {r['export_peak_bytes'] / GB:5.2f} GB; " if "export_s" in r
              else "export cached; " if "export_cached" in r else "")
    print(f"{r['variant']:16s} planned peak {r['planned_peak_bytes'] / GB:6.2f} GB  measured "
          f"{r['measured_peak_bytes'] / GB:6.2f} GB "
          f"({r['measured_peak_bytes'] / r['planned_peak_bytes']:.2f}x) | {export}load {r['load_s']:6.1f} s, peak "
          f"{r['load_peak_bytes'] / GB:5.2f} GB | weights {r['measured_weight_bytes'] / GB:5.2f} GB (planned "
          f"{r['planned_weight_bytes'] / GB:5.2f}) | decode {r['decode_tokens_per_s']:.2f} tokens/s", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="/tmp/ck7b/llama-2-7b")
    p.add_argument("--variants", default=DEFAULT_VARIANTS, help="comma-separated variant names")
    p.add_argument("--context", type=int, default=128, help="context the plan (and the load guard) reserves")
    p.add_argument("--prompt-tokens", type=int, default=16)
    p.add_argument("--decode-steps", type=int, default=4)
    p.add_argument("--out", type=Path, default=Path("edgekit-results/bench_7b_paths.jsonl"),
                   help="JSON lines file each finished row is appended to")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:  # child process: measure one variant, print one JSON line
        print("RESULT " + json.dumps(measure_one(args.model, args.one, args.context, args.prompt_tokens,
                                                 args.decode_steps)), flush=True)
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    print(f"{args.model}: {os.cpu_count()} CPUs; rows are appended to {args.out}", flush=True)
    for name in args.variants.split(","):
        child = subprocess.run([sys.executable, __file__, "--model", args.model, "--one", name, "--context",
                                str(args.context), "--prompt-tokens", str(args.prompt_tokens),
                                "--decode-steps", str(args.decode_steps)], capture_output=True, text=True)
        lines = [line for line in child.stdout.splitlines() if line.startswith("RESULT ")]
        if not lines:
            tail = child.stderr.strip().splitlines()[-1:] or [f"exit code {child.returncode}"]
            row = {"variant": name, "failed": tail[0]}
            print(f"{name:16s} failed: {tail[0]}", flush=True)
        else:
            row = json.loads(lines[0][len("RESULT "):])
            report(row)
        with args.out.open("a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
