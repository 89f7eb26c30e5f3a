"""Decode speed of int4 PackedLinear on torch's fused int4 kernel vs fp32, and vs the dequantize path.

Each model is loaded once per row in this process: fp32 (the baseline of the same run), then
int4-g32 and int4-g128 on the fused kernel (``aten._weight_int4pack_mm_for_cpu`` here,
``aten._weight_int4pack_mm`` on CUDA), then int4-g32 on the dequantize path (unpack +
dense matmul, what every packed layer did before). Each row is timed by
:func:`edgekit.measure.latency.measure_latency` (warm-up until steady, median of runs) and printed with
its ratio to fp32 and its achieved bandwidth. The target (issue 16): the kernel row decodes at
least 1.5x the fp32 row of a 135M-class or the 214M random model on a CPU.

  python benchmarks/make_random_checkpoint.py --preset 214m --out edgekit-results/random-llama-214m
  python benchmarks/bench_int4_kernel.py [--models default edgekit-results/random-llama-214m] [--threads N]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from edgekit.core.paths import eval_token_ids
from edgekit.measure.latency import measure_latency
from edgekit.measure.peak_memory import release_memory
from edgekit.models.load import load_model, load_tokenizer, resolve_source
from edgekit.models.runner import TorchRunner
from edgekit.quantizers.packed import quantize_rtn

ROOT = Path(__file__).resolve().parents[1]
ROWS = (("fp32", None, None), ("int4-g32 kernel", 32, None), ("int4-g128 kernel", 128, None),
        ("int4-g32 dequantize", 32, False))


def bench_model(source: str, new_tokens: int, runs: int) -> None:
    tokenizer = load_tokenizer(source)
    prompt = eval_token_ids(tokenizer, "eval")[:32]
    print(f"\n{resolve_source(source)}  ({new_tokens} new tokens after a 32-token prompt, median of {runs} runs)")
    print(f"{'row':22} {'MB':>8} {'tok/s':>8} {'x fp32':>7} {'p50 ms':>8} {'GB/s':>6} {'warm-ups':>8}  path")
    fp32_rate = None
    for label, group, kernel in ROWS:
        release_memory()
        model = load_model(source, dtype=torch.float32)
        if group:
            quantize_rtn(model, 4, group, kernel=kernel)
        runner = TorchRunner(label, model, tokenizer)
        lat = measure_latency(runner, prompt, new_tokens, runs, progress=False)
        rate = lat["decode_tokens_per_s"]
        fp32_rate = fp32_rate or rate
        print(f"{label:22} {runner.weight_bytes() / 1e6:8.1f} {rate:8.1f} {rate / fp32_rate:7.2f} "
              f"{lat['latency_ms_p50']:8.2f} {lat['achieved_bandwidth_gb_s']:6.2f} "
              f"{lat['warmup_runs']:>7}{'' if lat['steady'] else '!'}  {lat['compute_path']}", flush=True)
        runner.close()
        del model, runner


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["default", str(ROOT / "edgekit-results" / "random-llama-214m")])
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}")
    for source in args.models:
        bench_model(source, args.new_tokens, args.runs)


if __name__ == "__main__":
    main()
