"""Open-loop Poisson load against a running server over HTTP, and the knee where its P99 leaves a target.

The same method as :func:`edgekit.serve.batching.poisson_load`, one level up: requests leave at seeded
Poisson arrival times whether or not earlier ones were answered (open loop: a slow server cannot
slow its clients down, as closed-loop tests let it; Schroeder et al., "Open Versus Closed: A
Cautionary Tale", NSDI 2006), over real HTTP connections to ``/v1/completions``. Latency counts from
each request's scheduled arrival to its last byte, so a client that falls behind counts against
the server. Every run is bounded: a fixed number of requests, each with a client timeout.

Answers are sorted by status: 200 answered, 429 rejected by the bounded queue, 504 timed out
by the server's per-request limit (a client timeout counts there too), anything else failed.
As the speed protocol does (:mod:`edgekit.measure.speed`), a rate's target is judged on its P99 only when at
least ``P99_MIN_SAMPLES`` requests were answered, and otherwise on the upper bound of the median
latency's 95% interval (``target_basis`` says which).
"""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pandas as pd

from edgekit.core.progress import tqdm
from edgekit.measure.speed import P99_MIN_SAMPLES, median_interval
from edgekit.serve.batching import percentiles_ms, poisson_arrivals


async def _drive(url: str, payloads: list[dict], arrivals: np.ndarray, timeout_s: float) -> list[tuple]:
    limits = httpx.Limits(max_connections=len(payloads), max_keepalive_connections=len(payloads))
    async with httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=limits) as client:
        start = time.perf_counter()

        async def one(at: float, payload: dict) -> tuple:
            await asyncio.sleep(max(0.0, start + at - time.perf_counter()))
            try:
                reply = await client.post("/v1/completions", json=payload)
                tokens = reply.json()["usage"]["completion_tokens"] if reply.status_code == 200 else 0
                status = reply.status_code
            except httpx.TimeoutException:
                status, tokens = 504, 0
            return status, time.perf_counter() - (start + at), tokens, time.perf_counter() - start

        return await asyncio.gather(*(one(at, p) for at, p in zip(arrivals, payloads)))


def http_poisson_load(url: str, payloads: list[dict], rate_per_s: float, seed: int = 0,
                      timeout_s: float = 120.0) -> dict:
    """Send ``payloads`` (``/v1/completions`` bodies) at seeded Poisson times; figures of the answered ones.

    Runs its own event loop on a side thread, so it works inside Jupyter's running loop too.
    """
    arrivals = poisson_arrivals(rate_per_s, len(payloads), seed)
    with ThreadPoolExecutor(1) as pool:
        replies = pool.submit(asyncio.run, _drive(url, payloads, arrivals, timeout_s)).result()
    status = np.array([r[0] for r in replies])
    ok = status == 200
    span = max(r[3] for r in replies)
    return {"offered_rate_per_s": rate_per_s, "requests": len(payloads), "answered": int(ok.sum()),
            "rejected": int((status == 429).sum()), "timed_out": int((status == 504).sum()),
            "failed": int((~ok & (status != 429) & (status != 504)).sum()),
            "requests_per_s": float(ok.sum() / span), "tokens_per_s": float(sum(r[2] for r in replies) / span),
            **percentiles_ms([r[1] for r in replies if r[0] == 200]), "seed": seed,
            "latency_ms_p50_ci95": _median_bounds([r[1] * 1000 for r in replies if r[0] == 200])}


def _median_bounds(ms: list[float]) -> list[float] | None:
    if len(ms) < 2:
        return None
    _, low, high, _ = median_interval(ms)
    return [low, high]


def load_sweep(url: str, payloads: list[dict], rates: list[float], p99_target_ms: float, seed: int = 0,
               timeout_s: float = 120.0, progress: bool = True) -> pd.DataFrame:
    """:func:`http_poisson_load` at each rate (the same seeded arrivals scaled), with whether P99 met the target.

    A rate where requests were rejected or timed out misses the target too: its P99 covers only
    the requests the server chose to answer.
    """
    rows = []
    for rate in tqdm(rates, desc="load sweep", disable=not progress):
        row = http_poisson_load(url, payloads, rate, seed, timeout_s)
        row["p99_target_ms"] = p99_target_ms
        row["target_basis"], judged = target_latency(row)
        row["within_target"] = bool(row["answered"] == row["requests"] and judged <= p99_target_ms)
        rows.append(row)
    return pd.DataFrame(rows)


def target_latency(row: dict) -> tuple[str, float]:
    """``(basis, ms)``: what a rate's latency target is judged on: its P99 with at least ``P99_MIN_SAMPLES``
    answered requests, else the upper bound of the median's 95% interval."""
    interval = row.get("latency_ms_p50_ci95")
    if row["answered"] >= P99_MIN_SAMPLES or not interval:
        return "p99", row["latency_ms_p99"]
    return "median upper bound", interval[1]


def knee(sweep: pd.DataFrame) -> dict:
    """The highest offered rate within the target before the first that misses it (None where none is/does)."""
    missed = sweep[~sweep["within_target"]]
    first_miss = float(missed["offered_rate_per_s"].min()) if not missed.empty else None
    below = sweep[sweep["within_target"]]
    if first_miss is not None:
        below = below[below["offered_rate_per_s"] < first_miss]
    return {"sustained_rate_per_s": float(below["offered_rate_per_s"].max()) if not below.empty else None,
            "first_missed_rate_per_s": first_miss}


def describe_knee(sweep: pd.DataFrame, single_rate: float) -> str:
    """One line: the highest rate within the P99 target and the first that missed it, also as multiples of
    the single-stream rate."""
    k, target = knee(sweep), sweep["p99_target_ms"].iloc[0]
    sustained, first = k["sustained_rate_per_s"], k["first_missed_rate_per_s"]
    within = (f"P99 within {target:.0f} ms up to {sustained:.1f} req/s ({sustained / single_rate:.1f}x the single "
              f"stream)" if sustained else f"no rate tried kept P99 within {target:.0f} ms")
    return f"knee: {within}; " + (f"first missed at {first:.1f} req/s ({first / single_rate:.1f}x)" if first
                                  else "no rate tried missed it")
