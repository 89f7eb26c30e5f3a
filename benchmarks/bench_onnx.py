"""Decode speed of every ONNX variant against PyTorch fp32, and of edgekit's ORTRunner against the runtime's own loop.

For each model (the default tiny Llama, and a random-weight Llama of hundreds of millions
of parameters where ONNX Runtime's kernels rather than Python overhead decide), the script
measures PyTorch fp32 first and then each ONNX variant through the same
:func:`edgekit.measure.latency.measure_latency`: time to first token, decode tokens/s and the
P50/P95/P99 of single decode steps, with the ratio to PyTorch fp32 from the same run.

Then it checks that :class:`edgekit.runtimes.onnxruntime.runner.ORTRunner` loses nothing against the
runtimes' own generation loops on the same files and thread count: optimum's
``ORTModelForCausalLM.generate`` and, where installed, onnxruntime-genai's ``Generator``
(greedy), all timed end to end (prompt in, N tokens out), alternating.
It also prints the theoretical decode ceiling: bytes of weights read per token divided by
the time per token gives the memory bandwidth each variant achieves.

Run it alone (figures are noisy on a shared machine):
    flock /tmp/edgekit-bench.lock nice -n 5 .venv/bin/python benchmarks/bench_onnx.py
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edgekit.core.paths import eval_token_ids
from edgekit.measure.latency import measure_latency
from edgekit.models.load import resolve_source
from edgekit.runtimes import build_runner, cached_artifact, load_artifact

VARIANTS = ("onnx-fp32", "onnx-int8", "onnx-int8-static", "onnx-int4-g32:accuracy_level=0", "onnx-int4-g32",
            "onnx-int4-g128")
LOOP_VARIANTS = ("onnx-fp32", "onnx-int8", "onnx-int4-g32")


def row(name: str, lat: dict, base: dict | None, weight_bytes: int) -> str:
    """One table line; ``vs pt`` is decode tokens/s over the faster PyTorch fp32 row (blank for those rows)."""
    speedup = f"{lat['decode_tokens_per_s'] / base['decode_tokens_per_s']:6.2f}x" if base else "       "
    bandwidth = weight_bytes * lat["decode_tokens_per_s"] / 1e9
    return (f"  {name:34s} {lat['ttft_ms']:8.1f} {lat['decode_tokens_per_s']:8.1f} {speedup} "
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


def genai_loop(folder: Path, threads: int, workspace: Path):
    """onnxruntime-genai's own generation loop on the same model file (None if it is not installed).

    genai reads a ``genai_config.json`` beside the model; it is written into a folder of hard
    links to the artifact's files (the artifact itself stays as verified).
    """
    try:
        import onnxruntime_genai as og
    except ImportError:
        return None
    config = json.loads((folder / "config.json").read_text())
    linked = Path(tempfile.mkdtemp(prefix="genai-", dir=workspace))
    for name in os.listdir(folder):
        if name != "manifest.json":
            os.link(folder / name, linked / name)
    decoder = {"session_options": {"log_id": "onnxruntime-genai", "intra_op_num_threads": threads,
                                   "provider_options": []},
               "filename": "model.onnx", "head_size": config["hidden_size"] // config["num_attention_heads"],
               "hidden_size": config["hidden_size"], "num_attention_heads": config["num_attention_heads"],
               "num_hidden_layers": config["num_hidden_layers"], "num_key_value_heads": config["num_key_value_heads"],
               "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask", "position_ids": "position_ids",
                          "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"},
               "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                           "present_value_names": "present.%d.value"}}
    genai_config = {"model": {"type": "llama", "bos_token_id": config.get("bos_token_id"),
                              "eos_token_id": config.get("eos_token_id"),
                              "pad_token_id": config.get("pad_token_id") or config.get("eos_token_id"),
                              "vocab_size": config["vocab_size"], "context_length": config["max_position_embeddings"],
                              "decoder": decoder},
                    "search": {"do_sample": False, "num_beams": 1, "max_length": 4096,
                               "past_present_share_buffer": False}}
    (linked / "genai_config.json").write_text(json.dumps(genai_config))
    model = og.Model(str(linked))

    def generate(prompt: list[int], new_tokens: int) -> list[int]:
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(prompt) + new_tokens, do_sample=False)
        generator = og.Generator(model, params)
        generator.append_tokens(prompt)
        out = []
        while not generator.is_done() and len(out) < new_tokens:
            generator.generate_next_token()
            out.append(int(generator.get_next_tokens()[0]))
        return out

    return generate


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
    # PyTorch at the same thread count as ONNX Runtime, and at one thread: on a loaded machine
    # OpenMP's barriers can make two threads far slower than one. Ratios are against the faster.
    pytorch = {}
    for threads in sorted({args.threads, 1}, reverse=True):
        torch.set_num_threads(threads)
        pytorch[threads] = measure_latency(baseline, prompt, args.new_tokens, args.runs, progress=False)
        print(row(f"pytorch fp32 ({threads} thread{'s' * (threads > 1)})", pytorch[threads], None,
                  baseline.weight_bytes()), flush=True)
    base = max(pytorch.values(), key=lambda lat: lat["decode_tokens_per_s"])
    torch.set_num_threads(args.threads)
    baseline.close()
    for variant in args.variants:
        runner = load_artifact(folders[variant], intra_op_threads=args.threads)
        lat = measure_latency(runner, prompt, args.new_tokens, args.runs, progress=False)
        print(row(variant, lat, base, runner.weight_bytes()), flush=True)
        runner.close()

    print(f"  ORTRunner vs the runtimes' own loops, end to end ({args.new_tokens} tokens, greedy; "
          "ratio > 1: ORTRunner faster):")
    workspace = Path(tempfile.mkdtemp(prefix="bench-onnx-", dir=folders[args.variants[0]].parent))
    try:
        for variant in [v for v in LOOP_VARIANTS if v in folders]:
            runner = load_artifact(folders[variant], intra_op_threads=args.threads)
            batch, n = prompt[None, :], args.new_tokens
            mask = torch.ones_like(batch)
            optimum_model = optimum_loop(folders[variant], args.threads)
            genai_fn = genai_loop(folders[variant], args.threads, workspace)
            loops = {"ORTRunner": lambda: list(runner.generate_stream(batch, n)),
                     "optimum": lambda: optimum_model.generate(batch, attention_mask=mask, max_new_tokens=n,
                                                               min_new_tokens=n,
                                                         do_sample=False)[0, batch.shape[1]:].tolist()}
            if genai_fn is not None:
                loops["genai"] = lambda: genai_fn(prompt.tolist(), n)
            same = {name: loop() == loops["ORTRunner"]() for name, loop in loops.items() if name != "ORTRunner"}
            seconds = {name: [] for name in loops}
            for _ in range(2):  # alternate so that load changes fall on all of them
                for name, loop in loops.items():
                    seconds[name].append(end_to_end(loop, args.runs))
            rate = {name: n / min(s) for name, s in seconds.items()}
            others = "   ".join(f"{name} {rate[name]:6.1f} tok/s (ratio {rate['ORTRunner'] / rate[name]:4.2f}, "
                               f"same tokens {same[name]})" for name in loops if name != "ORTRunner")
            print(f"  {variant:20s} ORTRunner {rate['ORTRunner']:6.1f} tok/s   {others}", flush=True)
            runner.close()
            optimum_model = genai_fn = None  # free the sessions before the next variant
    finally:
        shutil.rmtree(workspace, ignore_errors=True)


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
