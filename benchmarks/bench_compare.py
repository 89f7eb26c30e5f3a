"""Time the default comparison and the overhead of edgekit's perplexity evaluation.

Two figures, each with its baseline measured in the same run:

1. **Evaluation overhead.** The same sliding windows (context 256, stride 128) of the eval
   split go through the fp32 default model three ways: bare forward passes
   (``runner.logits`` on the same batches, nothing else), :func:`edgekit.measure.quality.score` as a
   variant is scored (log-softmax, per-window sums, KL and top-1 against a baseline), and
   ``score`` as the baseline is scored (also keeping its log-probabilities in a memory-mapped
   file). Throughput is scored tokens per second; the ratio to bare forward passes is the
   price of the bookkeeping.
2. **The default comparison**: ``edgekit compare`` with its defaults (7 variants, 16,384
   tokens, 5 latency runs of 32 tokens), run as the console command a user runs, wall time
   and per-variant load / evaluation time.

Run it alone on the machine: ``flock /tmp/edgekit-bench.lock nice -n 5 .venv/bin/python
benchmarks/bench_compare.py`` (``--quick`` for a short smoke run). Figures are printed, never
asserted.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def evaluation_overhead(max_tokens: int, repeats: int) -> None:
    from edgekit.core.paths import eval_token_ids
    from edgekit.measure.quality import EvalSettings, score, sliding_windows
    from edgekit.models.load import load_tokenizer
    from edgekit.runtimes import build_runner

    settings = EvalSettings(context=256, stride=128, max_tokens=max_tokens, batch_size=8)
    tokenizer = load_tokenizer("default")
    ids = eval_token_ids(tokenizer, "eval")[:max_tokens]
    runner = build_runner("fp32", "default", tokenizer)
    windows = sliding_windows(len(ids), settings.context, settings.stride)
    batches, batch = [], []
    for w in windows:  # the batches score() forms: consecutive windows of one length
        if batch and (len(batch) == settings.batch_size or (w.end - w.begin) != batch[0].end - batch[0].begin):
            batches.append(batch)
            batch = []
        batch.append(w)
    batches.append(batch)

    def bare_forward():
        for b in batches:
            runner.logits(torch.stack([ids[w.begin:w.end] for w in b]))

    baseline = score(runner, ids, settings, keep_logprobs=True, progress=False)
    scored = baseline.scored_tokens
    modes = {"bare forward passes (same windows)": bare_forward,
             "score() as a variant (KL + top-1 vs baseline)": lambda: score(runner, ids, settings, baseline=baseline,
                                                                            progress=False),
             "score() as the baseline (keeps log-probs)": lambda: score(runner, ids, settings, keep_logprobs=True,
                                                                        progress=False)}
    times = {name: [] for name in modes}
    for _ in range(repeats):  # interleaved, so a load spike hits every mode alike
        for name, fn in modes.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    print(f"\n== evaluation overhead: fp32 default model, {len(ids)} tokens, {len(windows)} windows, "
          f"{scored} scored tokens, median of {repeats} ==")
    bare = statistics.median(times["bare forward passes (same windows)"])
    for name, values in times.items():
        t = statistics.median(values)
        print(f"  {name:48s} {t:7.2f} s  {scored / t:9.0f} tok/s  x{t / bare:5.2f} of bare forward")
    runner.close()


def default_comparison(quick: bool, extra: list[str]) -> None:
    with tempfile.TemporaryDirectory() as home:
        out = Path(home) / "compare.json"
        cmd = [sys.executable, "-m", "edgekit", "compare", "--json", str(out)]
        if quick:
            cmd += ["--variants", "fp32,int4-g32", "--max-tokens", "1024", "--runs", "1", "--new-tokens", "8"]
        cmd += extra
        env = {**os.environ, "EDGEKIT_HOME": home, "HF_HUB_OFFLINE": "1"}
        start = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode:
            print(proc.stderr[-2000:])
            raise SystemExit(proc.returncode)
        rows = json.loads(out.read_text())
    changed = " except " + " ".join(cmd[6:]) if cmd[6:] else ""
    print(f"\n== `edgekit compare` (defaults{changed}) ==")
    print(f"  wall time {wall:.1f} s for {len(rows)} variants, {rows[0]['scored_tokens']} scored tokens each")
    base = rows[0]
    for r in rows:
        print(f"  {r['variant']:10s} load {r['load_s']:6.1f} s  eval {r['eval_s']:6.1f} s "
              f"({r['scored_tokens'] / r['eval_s']:7.0f} tok/s, x{r['eval_s'] / base['eval_s']:4.2f} of fp32)  "
              f"decode {r['decode_tokens_per_s']:6.1f} tok/s "
              f"(x{r['decode_tokens_per_s'] / base['decode_tokens_per_s']:4.2f})"
              f"  weights {r['weight_bytes'] / 1e6:5.1f} MB (x{r['weight_bytes'] / base['weight_bytes']:4.2f})")
    measured = sum(r["load_s"] + r["eval_s"] for r in rows)
    print(f"  load + eval {measured:.1f} s of {wall:.1f} s; the rest is latency runs, start-up and bookkeeping")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tokens", type=int, default=4096, help="tokens for the overhead measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a short smoke run of both parts")
    parser.add_argument("--skip-compare", action="store_true", help="only the evaluation overhead")
    parser.add_argument("--compare-args", default="", help='options changed from the defaults of `edgekit compare`, '
                        'e.g. "--max-tokens 4096 --runs 2" on a busy machine')
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f} at start")
    evaluation_overhead(1024 if args.quick else args.max_tokens, 1 if args.quick else args.repeats)
    if not args.skip_compare:
        default_comparison(args.quick, shlex.split(args.compare_args))
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end (a shared machine: figures are indicative)")


if __name__ == "__main__":
    main()
