"""Decode speed of every runtime at 8 and 4 bits, and of each edgekit Runner against the runtime's own tool.

For each model (the default tiny Llama; a 214M random-weight Llama where kernels, not
Python overhead, decide) the script measures, through the same
:func:`edgekit.measure.latency.measure_latency` and the same prompt and thread count: PyTorch
(fp32 baseline, packed int8 and int4), ONNX Runtime (``onnx-int8``, ``onnx-int4-g32``),
OpenVINO (``ov-int8``, ``ov-int4-g32``) and llama.cpp (``gguf-f32``, ``gguf-q8_0``,
``gguf-q4_0``, ``gguf-q4_k_m``), printing decode tokens/s, its ratio to PyTorch fp32 from
the same run, and the weight bytes each reads per token.

Then each edgekit Runner is timed against the runtime's own generation path on the same
files: ``llama-bench`` for llama.cpp (built from the llama-cpp-python sdist's sources with
cmake by ``--build-llama-bench``; without the binary, llama-cpp-python's own
``Llama.generate`` loop is used and the script says so), a hand-written loop over
OpenVINO's ``InferRequest`` API (as OpenVINO's own LLM notebooks write it; openvino-genai
is not installed), and transformers' ``generate`` for PyTorch. edgekit may lose at most
10% to them.

Run it alone (figures are noisy on a shared machine):
    flock /tmp/edgekit-bench.lock nice -n 5 .venv/bin/python benchmarks/bench_runtimes.py
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edgekit.core.native_build import build_record, llama_cpp_version  # noqa: E402
from edgekit.core.paths import eval_token_ids, work_dir  # noqa: E402
from edgekit.measure.latency import measure_latency  # noqa: E402
from edgekit.models.load import load_tokenizer, resolve_source  # noqa: E402
from edgekit.runtimes import build_runner  # noqa: E402
from edgekit.variants.registry import Variant  # noqa: E402

RUNTIMES = {
    "PyTorch": ("fp32", "int8-g128", "int4-g32"),
    "ONNX Runtime": ("onnx-int8", "onnx-int4-g32"),
    "OpenVINO": ("ov-int8", "ov-int4-g32"),
    "llama.cpp": ("gguf-f32", "gguf-q8_0", "gguf-q4_0", "gguf-q4_k_m"),
}
BITS = {"fp32": 32, "int8-g128": 8, "int4-g32": 4, "onnx-int8": 8, "onnx-int4-g32": 4, "ov-int8": 8,
        "ov-int4-g32": 4, "gguf-f32": 32, "gguf-q8_0": 8, "gguf-q4_0": 4, "gguf-q4_k_m": 4}
LLAMA_BENCH = work_dir() / "llama-bench-build" / "bin" / "llama-bench"


def build_llama_bench() -> Path:
    """Build llama-bench from the llama.cpp sources in the installed llama-cpp-python's sdist (cmake + ninja),
    with the same instruction-set switches as the installed build (its build record), never -march=native."""
    version = llama_cpp_version()
    src = work_dir() / "llamacpp-src"
    tree = src / f"llama_cpp_python-{version}" / "vendor" / "llama.cpp"
    if not tree.is_dir():
        sdist = src / f"llama_cpp_python-{version}.tar.gz"
        if not sdist.is_file():
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                            f"llama-cpp-python=={version}", "-d", str(src)], check=True)
        with tarfile.open(sdist) as tar:
            tar.extractall(src, filter="data")
    record = build_record() or {"cmake_args": ["-DGGML_NATIVE=OFF"]}
    isa = [a for a in record["cmake_args"] if a.startswith("-DGGML_")]
    build = LLAMA_BENCH.parent.parent
    subprocess.run(["cmake", "-S", str(tree), "-B", str(build), "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release",
                    "-DLLAMA_OPENSSL=OFF", "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
                    "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_APP=OFF", "-DBUILD_SHARED_LIBS=OFF", *isa], check=True)
    subprocess.run(["cmake", "--build", str(build), "--target", "llama-bench", "-j", "2"], check=True)
    return LLAMA_BENCH


def llama_bench_rate(gguf: Path, threads: int, new_tokens: int, runs: int) -> float:
    """llama-bench's text-generation rate (tg, tokens/s) on the same file and threads."""
    out = subprocess.run([str(LLAMA_BENCH), "-m", str(gguf), "-p", "0", "-n", str(new_tokens), "-t", str(threads),
                          "-r", str(runs), "-o", "json"], capture_output=True, text=True, check=True)
    return float(json.loads(out.stdout)[0]["avg_ts"])


def llama_cpp_python_rate(gguf: Path, threads: int, prompt: list[int], new_tokens: int, runs: int) -> float:
    """llama-cpp-python's own greedy ``Llama.generate`` loop on the same file (a plain ``Llama``, as users make it)."""
    from llama_cpp import Llama

    llm = Llama(str(gguf), n_ctx=1024, n_threads=threads, n_threads_batch=threads, verbose=False)
    rates = []
    for run in range(runs + 1):
        stamps = []
        for _ in llm.generate(prompt, top_k=1, temp=0.0, reset=True):
            stamps.append(time.perf_counter())
            if len(stamps) == new_tokens:
                break
        if run:
            rates.append((new_tokens - 1) / (stamps[-1] - stamps[0]))
    llm.close()
    return float(np.median(rates))


def openvino_loop_rate(folder: Path, threads: int, prompt: list[int], new_tokens: int, runs: int) -> float:
    """A plain OpenVINO InferRequest greedy loop (KV cache fed back as numpy), as OpenVINO's notebooks write it."""
    import openvino as ov

    compiled = ov.Core().compile_model(str(folder / "openvino_model.xml"), "CPU",
                                       {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads})
    request = compiled.create_infer_request()
    past_names = [i.get_any_name() for i in compiled.inputs if i.get_any_name().startswith("past_key_values.")]
    shape = compiled.input(past_names[0]).get_partial_shape()
    rates = []
    for run in range(runs + 1):
        ids = np.array([prompt], dtype=np.int64)
        past = {n: np.zeros((1, shape[1].get_length(), 0, shape[3].get_length()), np.float32) for n in past_names}
        stamps, length = [], 0
        for _ in range(new_tokens):
            n = ids.shape[1]
            out = request.infer({"input_ids": ids, "attention_mask": np.ones((1, length + n), np.int64),
                                 "position_ids": np.arange(length, length + n, dtype=np.int64)[None], **past})
            token = int(out["logits"][0, -1].argmax())
            stamps.append(time.perf_counter())
            past = {p: out[p.replace("past_key_values.", "present.")] for p in past_names}
            length += n
            ids = np.array([[token]], dtype=np.int64)
        if run:
            rates.append((new_tokens - 1) / (stamps[-1] - stamps[0]))
    return float(np.median(rates))


def transformers_generate_rate(runner, prompt: torch.Tensor, new_tokens: int, runs: int) -> float:
    """transformers' own greedy ``generate`` (tokens/s over the whole call, prefill excluded by difference)."""
    def timed(n: int) -> float:
        start = time.perf_counter()
        runner.model.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
        return time.perf_counter() - start
    timed(2)
    rates = []
    for _ in range(runs):
        one, full = timed(1), timed(new_tokens)
        rates.append((new_tokens - 1) / (full - one))
    return float(np.median(rates))


def own_tool_rate(variant: str, runner, prompt: torch.Tensor, args) -> tuple[str, float] | None:
    family = Variant.parse(variant).family
    ids = prompt.reshape(-1).tolist()
    if family == "llama.cpp":
        if LLAMA_BENCH.is_file():
            return "llama-bench", llama_bench_rate(runner.path, args.threads, args.new_tokens, args.runs)
        return "Llama.generate (llama-bench not built)", llama_cpp_python_rate(runner.path, args.threads, ids,
                                                                              args.new_tokens, args.runs)
    if family == "openvino":
        return "InferRequest loop", openvino_loop_rate(runner.folder, args.threads, ids, args.new_tokens, args.runs)
    if family == "pytorch":
        return "transformers generate", transformers_generate_rate(runner, prompt.reshape(1, -1), args.new_tokens,
                                                                   args.runs)
    return None


def bench_model(model: str, args) -> None:
    source = resolve_source(model)
    tokenizer = load_tokenizer(source)
    prompt = eval_token_ids(tokenizer, "eval")[: args.prompt_tokens]
    print(f"\n## {model}  ({args.threads} threads, prompt {len(prompt)} tokens, {args.new_tokens} new tokens, "
          f"median of {args.runs} runs)")
    print(f"  {'runtime':13s} {'variant':13s} {'bits':>4s} {'tok/s':>8s} {'vs fp32':>8s} {'weights MB':>10s}   "
          f"own tool: {'tok/s':>8s}  edgekit/own")
    base = None
    for runtime, variants in RUNTIMES.items():
        if runtime == "ONNX Runtime" and importlib.util.find_spec("edgekit.runtimes.onnxruntime") is None:
            print(f"  {runtime:13s} skipped: edgekit.runtimes.onnxruntime is not present")
            continue
        for variant in variants:
            takes_threads = Variant.parse(variant).family in ("openvino", "llama.cpp")
            name = f"{variant}:threads={args.threads}" if takes_threads else variant
            try:
                runner = build_runner(name, source, tokenizer)
            except Exception as exc:  # one runtime's failure must not end the benchmark
                print(f"  {runtime:13s} {variant:13s} skipped: {type(exc).__name__}: {str(exc)[:120]}")
                continue
            lat = measure_latency(runner, prompt, args.new_tokens, args.runs, warmup=1, progress=False)
            rate = lat["decode_tokens_per_s"]
            base = base or rate
            line = (f"  {runtime:13s} {variant:13s} {BITS[variant]:4d} {rate:8.1f} {rate / base:7.2f}x "
                    f"{runner.weight_bytes() / 1e6:10.1f}")
            own = own_tool_rate(variant, runner, prompt, args) if args.own_tools else None
            if own:
                tool, own_rate = own
                verdict = "ok" if rate >= 0.9 * own_rate else "SLOWER THAN 10%"
                line += f"   {tool}: {own_rate:8.1f}  {rate / own_rate:5.2f} {verdict}"
            print(line, flush=True)
            runner.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+",
                        default=["default", str(ROOT / "edgekit-results" / "random-llama-214m")])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-own-tools", dest="own_tools", action="store_false",
                        help="skip the comparison with each runtime's own generation loop")
    parser.add_argument("--build-llama-bench", action="store_true", help="build llama-bench first (cmake, minutes)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.build_llama_bench and not LLAMA_BENCH.is_file():
        build_llama_bench()
    for model in args.models:
        bench_model(model, args)


if __name__ == "__main__":
    main()
