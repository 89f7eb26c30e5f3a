"""Decode speed of every ONNX variant against PyTorch fp32, and of edgekit's ORTRunner against the runtime's own loop.

For each model (the default tiny Llama, and a random-weight Llama of hundreds of millions
of parameters where ONNX Runtime's kernels rather than Python overhead decide), the script
measures PyTorch fp32 first and then each ONNX variant through the same
:func:`edgekit.measure.measure_latency`: time to first token, decode tokens/s and the
P50/P95/P99 of single decode steps, with the ratio to PyTorch fp32 from the same run.

Then it checks that :class:`edgekit.ort_runner.ORTRunner` loses nothing against the
runtime's own generation loop: optimum's ``ORTModelForCausalLM.generate`` (greedy, same
files, same thread count), both timed end to end (prompt in, N tokens out), alternating.
It also prints the theoretical decode ceiling: bytes of weights read per token divided by
the time per token gives the memory bandwidth each variant achieves.

Run it alone (figures are noisy on a shared machine):
    flock /tmp/edgekit-bench.lock nice -n 5 .venv/bin/python benchmarks/bench_onnx.py
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edgekit.artifact import load_artifact  # noqa: E402
from edgekit.compare import eval_token_ids  # noqa: E402
from edgekit.loading import resolve_source  # noqa: E402
from edgekit.measure import measure_latency  # noqa: E402
from edgekit.onnx_variants import cached_artifact  # noqa: E402
from edgekit.variants import build_runner  # noqa: E402

VARIANTS = ("onnx-fp32", "onnx-int8", "onnx-int8-static", "onnx-int4-g32:accuracy_level=0", "onnx-int4-g32",
            "onnx-int4-g128")
LOOP_VARIANTS = ("onnx-fp32", "onnx-int8", "onnx-int4-g32")


def row(name: str, lat: dict, base: dict | None, weight_bytes: int) -> str:
    speedup = lat["decode_tokens_per_s"] / base["decode_tokens_per_s"] if base else 1.0
    bandwidth = weight_bytes * lat["decode_tokens_per_s"] / 1e9
    return (f"  {name:34s} {lat['ttft_ms']:8.1f} {lat['decode_tokens_per_s']:8.1f} {speedup:6.2f}x "
            f"{lat['latency_ms_p50']:7.2f} {lat['latency_ms_p95']:7.2f} {lat['latency_ms_p99']:7.2f} "
            f"{weight_bytes / 1e6:9.1f} {bandwidth:6.2f}")


def optimum_loop(folder: Path, threads: int):
    """optimum's own generation loop on the same artifact files."""
    import onnxruntime as ort
    from optimum.onnxruntime import ORTModelForCausalLM

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ORTModelForCausalLM.from_pretrained(folder, session_options=options, use_cache=True, use_io_binding=True,
                                               provider="CPUExecutionProvider")


def end_to_end(fn, runs: int) -> float:
    """Median seconds of ``fn()`` over ``runs`` calls after one warm-up."""
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_model(source: str, args) -> None:
    print(f"\n=== {source}  (threads {args.threads}, prompt {args.prompt_tokens} tokens, "
          f"{args.new_tokens} new tokens, {args.runs} runs after 1 warm-up)", flush=True)
    torch.set_num_threads(args.threads)
    baseline = build_runner("fp32", source)
    ids = eval_token_ids(baseline.tokenizer, "eval")
    prompt = ids[: args.prompt_tokens]
    folders = {v: cached_artifact(v, source) for v in args.variants}  # export before timing anything
    print(f"  {'variant':34s} {'TTFT ms':>8s} {'tok/s':>8s} {'vs pt':>7s} {'p50 ms':>7s} {'p95 ms':>7s} "
          f"{'p99 ms':>7s} {'weights MB':>9s} {'GB/s':>6s}")
    base = measure_latency(baseline, prompt, args.new_tokens, args.runs, progress=False)
    print(row("pytorch fp32", base, None, baseline.weight_bytes()), flush=True)
    baseline.close()
    for variant in args.variants:
        runner = load_artifact(folders[variant], intra_op_threads=args.threads)
        lat = measure_latency(runner, prompt, args.new_tokens, args.runs, progress=False)
        print(row(variant, lat, base, runner.weight_bytes()), flush=True)
        runner.close()

    print(f"  ORTRunner vs optimum ORTModelForCausalLM.generate, end to end ({args.new_tokens} tokens, greedy):")
    for variant in [v for v in LOOP_VARIANTS if v in folders]:
        runner = load_artifact(folders[variant], intra_op_threads=args.threads)
        loop = optimum_loop(folders[variant], args.threads)
        batch = prompt[None, :]
        mask = torch.ones_like(batch)
        ours_tokens = list(runner.generate_stream(batch, args.new_tokens))
        theirs_tokens = loop.generate(batch, attention_mask=mask, max_new_tokens=args.new_tokens,
                                      min_new_tokens=args.new_tokens, do_sample=False)[0, batch.shape[1]:].tolist()
        ours, theirs = [], []
        for _ in range(2):  # alternate so that load changes fall on both
            ours.append(end_to_end(lambda: list(runner.generate_stream(batch, args.new_tokens)), args.runs))
            theirs.append(end_to_end(lambda: loop.generate(batch, attention_mask=mask, max_new_tokens=args.new_tokens,
                                                           min_new_tokens=args.new_tokens, do_sample=False),
                                     args.runs))
        ours_rate, theirs_rate = args.new_tokens / min(ours), args.new_tokens / min(theirs)
        print(f"  {variant:34s} ORTRunner {ours_rate:7.1f} tok/s   optimum {theirs_rate:7.1f} tok/s   "
              f"ratio {ours_rate / theirs_rate:5.2f}   same tokens: {ours_tokens == theirs_tokens}", flush=True)
        runner.close()
        del loop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=f"default,{ROOT / 'edgekit-results' / 'random-llama-214m'}")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        bench_model(resolve_source(model), args)


if __name__ == "__main__":
    main()
