"""Serving under open-loop load: `edgekit serve` on 127.0.0.1 at several Poisson rates, and the knee of its P99.

Starts the server as its own process, as an operator would (`edgekit serve ARTIFACT`), then

1. the baseline, in the same run: requests sent one after another (closed loop, nothing queued):
   latency P50/P99 and the single-stream rate 1 / mean latency;
2. seeded open-loop Poisson load (edgekit.serve.load_test) at multiples of that rate, a bounded number
   of requests each: throughput (answered requests/s, generated tokens/s), P50/P95/P99 from each
   request's scheduled arrival, rejected (429, queue full) and timed-out (504) counts;
3. the knee: the highest offered rate whose P99 met the target (default 3x the baseline P99) with
   nothing rejected or timed out, and the first rate that missed it;
4. sampled against greedy, in the same run: ``--rounds`` rounds, each a burst of ``--burst``
   concurrent requests of ``--sample-tokens`` tokens greedy (temperature 0) and the same burst sampled
   (temperature 0.8, top_p 0.95, seeded per request and round), in an order shuffled per round so a
   drift of the machine falls on both alike. Each round gives the ratio of the two bursts' generated
   tokens/s; the median ratio is printed with its 95% interval (the speed protocol's order-statistic
   interval, :func:`edgekit.measure.speed.median_interval`: 7 rounds or more reach 95%). Sampling runs
   through the runner's KV cache and is batched like greedy work, so the ratio should be near 1
   (target: at least 0.8, read on the interval's lower bound).

Usage:
  flock /tmp/edgekit-bench.lock .venv/bin/python benchmarks/bench_serve.py [--artifact DIR] [--rates 0.5,1,2,4,8]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from edgekit.artifacts.manifest import verify_artifact
from edgekit.core.paths import read_split
from edgekit.measure.speed import P99_MIN_SAMPLES, median_interval
from edgekit.serve.load_test import describe_knee, load_sweep


def export(args, scratch: str) -> Path:
    """The variant exported with `edgekit export` into a scratch folder (when no --artifact is given)."""
    folder = Path(scratch) / args.variant
    subprocess.run([sys.executable, "-m", "edgekit", "export", "--model", args.model, "--variant", args.variant,
                    "--out", str(folder)], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return folder


def start_server(folder: Path, args) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "edgekit", "serve", str(folder), "--port", str(port),
                             "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms),
                             "--max-queue", str(args.max_queue), "--timeout-s", str(args.timeout_s)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the server did not become ready; run `edgekit serve {folder}` to see why")
        try:
            if httpx.get(url + "/health/ready", timeout=5).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)


def burst_tokens_per_s(url: str, payloads: list[dict]) -> float:
    """Generated tokens per second of ``payloads`` sent all at once (usage counts over the burst's wall time)."""
    async def send() -> float:
        async with httpx.AsyncClient(base_url=url, timeout=300) as client:
            start = time.perf_counter()
            replies = await asyncio.gather(*(client.post("/v1/completions", json=p) for p in payloads))
            wall = time.perf_counter() - start
        if any(r.status_code != 200 for r in replies):
            bad = next(r for r in replies if r.status_code != 200)
            raise SystemExit(f"a burst request failed: {bad.status_code} {bad.text}")
        return sum(r.json()["usage"]["completion_tokens"] for r in replies) / wall

    return asyncio.run(send())


def sampled_vs_greedy(url: str, burst: list[dict], rounds: int, seed: int) -> tuple[list[float], list[float]]:
    """Generated tokens/s of the greedy and the sampled burst in each of ``rounds`` rounds, in an order
    shuffled per round (seeded): two lists paired by round."""
    rng = np.random.default_rng(seed)
    greedy, sampled = [], []
    for r in range(rounds):
        drawn = [{**b, "temperature": 0.8, "top_p": 0.95, "seed": seed + r * len(burst) + i}
                 for i, b in enumerate(burst)]
        for kind in rng.permutation(["greedy", "sampled"]):
            if kind == "greedy":
                greedy.append(burst_tokens_per_s(url, burst))
            else:
                sampled.append(burst_tokens_per_s(url, drawn))
    return greedy, sampled


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default")
    p.add_argument("--variant", default="onnx-int4-g32")
    p.add_argument("--artifact", default=None, help="an artifact folder (default: export --variant now)")
    p.add_argument("--rates", default="0.5,1,2,4,8", help="offered rates as multiples of the single-stream rate")
    p.add_argument("--requests", type=int, default=48, help="requests per rate (bounded)")
    p.add_argument("--baseline-requests", type=int, default=12)
    p.add_argument("--max-tokens", type=int, default=16, help="tokens generated per request (greedy)")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--max-wait-ms", type=float, default=10.0)
    p.add_argument("--max-queue", type=int, default=32)
    p.add_argument("--timeout-s", type=float, default=10.0)
    p.add_argument("--p99-ms", type=float, default=None, help="P99 target (default: 3x the baseline P99)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--burst", type=int, default=8, help="concurrent requests of the sampled-vs-greedy burst")
    p.add_argument("--sample-tokens", type=int, default=128, help="tokens per request of that burst")
    p.add_argument("--rounds", type=int, default=15, help="greedy/sampled burst pairs (7 or more reach 95%%)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as scratch:
        run(Path(args.artifact) if args.artifact else export(args, scratch), args)


def run(folder: Path, args) -> None:
    model = verify_artifact(folder).variant
    lines = [line for line in read_split("eval").splitlines() if len(line.split()) >= 4][:64]
    payloads = [{"model": model, "prompt": lines[i % len(lines)], "max_tokens": args.max_tokens, "temperature": 0}
                for i in range(args.requests)]
    proc, url = start_server(folder, args)
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            client.post("/v1/completions", json=payloads[0])  # connection and caches warm
            latencies = []
            for payload in payloads[:args.baseline_requests]:
                start = time.perf_counter()
                reply = client.post("/v1/completions", json=payload)
                if reply.status_code != 200:
                    raise SystemExit(f"the baseline request failed: {reply.status_code} {reply.text}")
                latencies.append(time.perf_counter() - start)
        base_p50, base_p99 = (float(np.percentile(latencies, q)) * 1000 for q in (50, 99))
        _, _, base_p50_high, _ = median_interval(np.asarray(latencies) * 1000)
        # a P99 of fewer than P99_MIN_SAMPLES requests is not one: the default target then rests on the median's bound
        base_tail = base_p99 if len(latencies) >= P99_MIN_SAMPLES else base_p50_high
        single = 1 / float(np.mean(latencies))
        target = args.p99_ms or 3 * base_tail
        print(f"{model} behind `edgekit serve` (max batch {args.max_batch}, wait {args.max_wait_ms:g} ms, "
              f"queue {args.max_queue}, timeout {args.timeout_s:g} s), {args.max_tokens} greedy tokens per request")
        tail = (f"P99 {base_p99:.0f} ms" if len(latencies) >= P99_MIN_SAMPLES else
                f"P99 withheld ({len(latencies)} < {P99_MIN_SAMPLES} requests), median upper 95% bound "
                f"{base_p50_high:.0f} ms")
        print(f"baseline, one request at a time ({len(latencies)} requests): P50 {base_p50:.0f} ms, "
              f"{tail}, single-stream rate {single:.1f} req/s; target {target:.0f} ms")

        rates = [float(m) * single for m in args.rates.split(",")]
        load_sweep(url, payloads[:16], [single], target, args.seed + 1, progress=False)  # warm-up, not reported
        sweep = load_sweep(url, payloads, rates, target, args.seed, timeout_s=args.timeout_s + 5)
        burst = [{**payloads[i % len(payloads)], "max_tokens": args.sample_tokens} for i in range(args.burst)]
        burst_tokens_per_s(url, burst)  # warm-up at this length, not reported
        greedy, sampled = sampled_vs_greedy(url, burst, args.rounds, args.seed)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    sweep.insert(1, "x_single", sweep["offered_rate_per_s"] / single)
    sweep["p99_x_base"] = sweep["latency_ms_p99"] / base_tail
    columns = ["offered_rate_per_s", "x_single", "answered", "rejected", "timed_out", "requests_per_s",
               "tokens_per_s", "latency_ms_p50", "latency_ms_p95", "latency_ms_p99", "p99_x_base", "target_basis",
               "within_target"]
    print(f"\nopen-loop Poisson load, {args.requests} requests per rate (seed {args.seed}):")
    print(sweep[columns].to_string(index=False, float_format=lambda x: f"{x:.1f}"))
    print(describe_knee(sweep, single))
    ratio, low, high, coverage = median_interval(np.asarray(sampled) / np.asarray(greedy))
    interval = "no interval (one round)" if low is None else f"[{low:.2f}, {high:.2f}] ({coverage:.0%} interval)"
    verdict = ("no interval to read" if low is None else
               "meets it" if low >= 0.8 else "misses it" if high < 0.8 else "not resolved against it")
    print(f"\nsampled vs greedy, {args.rounds} rounds of {args.burst} concurrent requests of {args.sample_tokens} "
          f"tokens, order shuffled per round: greedy median {np.median(greedy):.0f} tokens/s, sampled median "
          f"{np.median(sampled):.0f} tokens/s; ratio paired by round {ratio:.2f} {interval}; "
          f"target >= 0.8 on the lower bound: {verdict}")


if __name__ == "__main__":
    main()
