"""The portable llama.cpp build against the build it replaces, and against llama-bench, on the same GGUF.

`make setup` builds llama-cpp-python with GGML_NATIVE=OFF and the instruction sets this OS enables
(tools/build_llama_cpp.py). This script times, on the same GGUF files (the default model's Q8_0 and
Q4_0 artifacts, and optionally a larger random-weight model's), each llama.cpp build it is given in a
child process of its own (a build that crashes ends only its child): prompt processing (one batch of
``--prompt`` tokens, tokens/s) and text generation (``--gen`` tokens one at a time, tokens/s), the
median of ``--runs``. Rows are ratios against the installed build from the same run.

    # the build it replaces: llama-cpp-python's default (-march=native), installed into a side folder
    CMAKE_ARGS="-DLLAVA_BUILD=OFF" pip install --no-deps --no-cache-dir --target /tmp/native/site
    llama-cpp-python==0.3.36
    python benchmarks/bench_llama_build.py --other native=/tmp/native/site --llama-bench

``--llama-bench`` also builds llama.cpp's own llama-bench with the installed build's switches
(benchmarks/bench_runtimes.py) and runs it on the same files and threads.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edgekit.core.native_build import build_record  # noqa: E402
from edgekit.models.load import resolve_source  # noqa: E402
from edgekit.runtimes import cached_artifact  # noqa: E402
from edgekit.runtimes.llama_cpp import MODEL_FILE  # noqa: E402
from edgekit.variants.registry import Variant  # noqa: E402

CHILD = """
import json, statistics, sys, time
import llama_cpp
path, threads, prompt, gen, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
llm = llama_cpp.Llama(path, n_ctx=prompt + gen + 8, n_batch=prompt, n_threads=threads, n_threads_batch=threads,
                      verbose=False)
vocab = llm.n_vocab()
tokens = [(7 * i + 3) % (vocab - 10) + 5 for i in range(prompt)]
pp, tg = [], []
for run in range(runs + 1):  # the first run warms up
    llm.reset()
    t0 = time.perf_counter(); llm.eval(tokens); t1 = time.perf_counter()
    for i in range(gen):
        llm.eval([(11 * i + 5) % (vocab - 10) + 5])
    t2 = time.perf_counter()
    if run:
        pp.append(prompt / (t1 - t0)); tg.append(gen / (t2 - t1))
print(json.dumps({"pp": statistics.median(pp), "tg": statistics.median(tg),
                  "system": llama_cpp.llama_print_system_info().decode()}))
"""


def time_build(site: str | None, gguf: Path, threads: int, prompt: int, gen: int, runs: int) -> dict:
    env = dict(os.environ)
    if site:
        env["PYTHONPATH"] = site + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run([sys.executable, "-c", CHILD, str(gguf), str(threads), str(prompt), str(gen), str(runs)],
                          capture_output=True, text=True, env=env)
    if done.returncode != 0:
        return {"error": f"exit {done.returncode}" + (f" (signal {-done.returncode})" if done.returncode < 0 else "")}
    return json.loads(done.stdout.strip().splitlines()[-1])


def llama_bench(binary: Path, gguf: Path, threads: int, prompt: int, gen: int, runs: int) -> dict:
    out = subprocess.run([str(binary), "-m", str(gguf), "-p", str(prompt), "-n", str(gen), "-t", str(threads),
                          "-r", str(runs), "-o", "json"], capture_output=True, text=True, check=True)
    rows = json.loads(out.stdout)
    return {"pp": next(r["avg_ts"] for r in rows if r["n_prompt"]),
            "tg": next(r["avg_ts"] for r in rows if r["n_gen"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--other", action="append", default=[], help="NAME=SITE_DIR of another llama_cpp build")
    parser.add_argument("--model", action="append", default=None, help="model sources (default: default)")
    parser.add_argument("--quants", default="gguf-q8_0,gguf-q4_0")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--gen", type=int, default=64)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--llama-bench", action="store_true", help="also build and run llama.cpp's llama-bench")
    args = parser.parse_args()
    builds = {"installed (edgekit)": None, **dict(o.split("=", 1) for o in args.other)}
    bench = None
    if args.llama_bench:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from bench_runtimes import LLAMA_BENCH, build_llama_bench

        bench = LLAMA_BENCH if LLAMA_BENCH.is_file() else build_llama_bench()
    record = build_record() or {}
    print(f"installed build: {' '.join(a for a in record.get('cmake_args', []) if a.endswith('=ON')) or 'unknown'}")
    print(f"{'model':<28} {'file':<10} {'build':<22} {'pp tok/s':>9} {'tg tok/s':>9} {'pp x':>6} {'tg x':>6}")
    for model in args.model or ["default"]:
        source = resolve_source(model)
        for quant in args.quants.split(","):
            gguf = cached_artifact(Variant.parse(quant), source) / MODEL_FILE
            rows = {name: time_build(site, gguf, args.threads, args.prompt, args.gen, args.runs)
                    for name, site in builds.items()}
            if bench:
                rows["llama-bench"] = llama_bench(bench, gguf, args.threads, args.prompt, args.gen, args.runs)
            base = rows["installed (edgekit)"]
            for name, row in rows.items():
                if "error" in row:
                    print(f"{Path(model).name:<28} {quant[5:]:<10} {name:<22} {row['error']}")
                    continue
                ratio = (lambda k: row[k] / base[k]) if "error" not in base else (lambda k: float("nan"))
                print(f"{Path(model).name:<28} {quant[5:]:<10} {name:<22} {row['pp']:9.1f} {row['tg']:9.1f} "
                      f"{ratio('pp'):6.2f} {ratio('tg'):6.2f}")


if __name__ == "__main__":
    main()
