"""Batching under a latency target: a batch-size sweep, a dynamic batcher and an open-loop load test.

Batching trades latency for throughput: one decode step for a batch of *b* costs much less
than *b* steps, but every request in the batch waits for the slowest. Following the
serving guides (Triton "Dynamic batcher": preferred batch size plus a maximum queue delay;
Clipper, Crankshaw et al., NSDI 2017: the largest batch that meets the latency objective),
this module

- sweeps batch sizes and reports throughput and P50/P95/P99 per-request latency, and the
  largest batch whose P99 meets a target (:func:`batch_sweep`, :func:`largest_batch_within`).
  Every request of one run waits the same wall time, so a run is one sample, not *b*: a P99 of
  three runs is their maximum. As the speed protocol does (:mod:`edgekit.measure.speed`), the target is
  gated on P99 only when the sweep timed at least ``P99_MIN_SAMPLES`` runs of that batch size,
  and otherwise on the upper bound of the median's 95% interval over the runs
  (``latency_ms_p50_ci95``; ``target_basis`` says which);
- groups queued requests up to that cap or a maximum wait (:class:`DynamicBatcher`);
- drives it with a bounded, seeded open-loop load generator (Poisson arrivals: requests
  arrive on schedule whether or not earlier ones have finished, as real clients do,
  which closed-loop tests hide) and reports throughput, percentiles and target misses
  (:func:`poisson_load`).
"""
from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from edgekit.core.errors import InputError
from edgekit.core.progress import tqdm
from edgekit.measure.speed import P95_MIN_SAMPLES, P99_MIN_SAMPLES, median_interval


def percentiles_ms(seconds: list[float] | np.ndarray) -> dict:
    ms = np.asarray(seconds, dtype=float) * 1000
    if ms.size == 0:
        return {"latency_ms_p50": float("nan"), "latency_ms_p95": float("nan"), "latency_ms_p99": float("nan")}
    return {f"latency_ms_p{q}": float(np.percentile(ms, q)) for q in (50, 95, 99)}


def batch_sweep(runner, prompts: list[torch.Tensor], batch_sizes=(1, 2, 4, 8, 16, 32), new_tokens: int = 16,
                repeats: int = 3, warmup: int = 1, progress: bool = True) -> pd.DataFrame:
    """Time ``runner.generate_batch`` at each batch size (``repeats`` timed runs after ``warmup``).

    Every request of a batch is answered when the batch finishes, so each timed run gives
    *b* per-request latencies equal to its wall time; throughput is generated tokens (and
    requests) per second of wall time. Prompts are reused cyclically to fill large batches.
    """
    if not prompts:
        raise InputError("give at least one prompt for the batch sweep")
    rows = []
    for b in tqdm(batch_sizes, desc=f"batch sweep {runner.name}", disable=not progress):
        batch = [prompts[i % len(prompts)] for i in range(b)]
        latencies, walls = [], []
        for run in range(warmup + repeats):
            start = time.perf_counter()
            outputs = runner.generate_batch(batch, new_tokens)
            wall = time.perf_counter() - start
            if len(outputs) != b or any(len(o) != new_tokens for o in outputs):
                raise InputError(f"{runner.name} answered {len(outputs)} of {b} requests; its generate_batch is "
                                 f"broken")
            if run >= warmup:
                walls.append(wall)
                latencies.extend([wall] * b)
        total = sum(walls)
        _, low, high, _ = median_interval(np.asarray(walls) * 1000)
        rows.append({"batch_size": b, "tokens_per_s": b * new_tokens * repeats / total,
                     "requests_per_s": b * repeats / total, **percentiles_ms(latencies),
                     "latency_samples": repeats, "latency_ms_p50_ci95": None if low is None else [low, high],
                     "latency_indicative": [f"p{q}" for q, n in ((95, P95_MIN_SAMPLES), (99, P99_MIN_SAMPLES))
                                            if repeats < n],
                     "target_basis": "p99" if repeats >= P99_MIN_SAMPLES else "median upper bound",
                     "new_tokens": new_tokens, "repeats": repeats})
    return pd.DataFrame(rows)


def largest_batch_within(sweep: pd.DataFrame, p99_target_ms: float, max_wait_ms: float = 0.0) -> int | None:
    """The largest batch size whose P99 latency meets the target (None: not even batch 1 does).

    Behind a :class:`DynamicBatcher` a request may first wait up to ``max_wait_ms`` for companions,
    so pass the batcher's wait: the batch itself must then finish within the target minus that wait.
    """
    ok = sweep[target_latency_ms(sweep) + max_wait_ms <= p99_target_ms]
    return int(ok["batch_size"].max()) if not ok.empty else None


def target_latency_ms(sweep: pd.DataFrame) -> pd.Series:
    """Per batch size, the latency a target is judged on: P99 with enough runs, else the upper bound of the
    median's interval (a sweep without those columns: its P99)."""
    if "target_basis" not in sweep:
        return sweep["latency_ms_p99"]
    bound = sweep["latency_ms_p50_ci95"].map(lambda ci: ci[1] if isinstance(ci, list) else np.nan)
    fallback = bound.fillna(sweep["latency_ms_p99"])
    return sweep["latency_ms_p99"].where(sweep["target_basis"] == "p99", fallback)


@dataclass
class _Request:
    payload: Any
    future: Future
    arrived: float = field(default_factory=time.perf_counter)


class DynamicBatcher:
    """Queue requests; a worker thread groups them up to ``max_batch`` or ``max_wait_ms`` and runs them together.

    ``run_batch(payloads) -> results`` (one result per payload, same order) does the work.
    A batch closes when it holds ``max_batch`` requests or ``max_wait_ms`` has passed since
    its first request was taken, whichever comes first. :meth:`submit` returns a
    ``concurrent.futures.Future``; an exception in ``run_batch`` fails that batch's futures
    only, and the worker keeps serving. ``batch_sizes`` and ``batch_waits_s`` record each
    batch formed.
    """

    def __init__(self, run_batch: Callable[[list], list], max_batch: int = 8, max_wait_ms: float = 10.0) -> None:
        if max_batch < 1:
            raise InputError(f"max_batch={max_batch}; use at least 1")
        if max_wait_ms < 0:
            raise InputError(f"max_wait_ms={max_wait_ms}; use 0 or more")
        self.run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000
        self.batch_sizes: list[int] = []
        self.batch_waits_s: list[float] = []
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._closed = False
        self._worker = threading.Thread(target=self._serve, name="edgekit-batcher", daemon=True)
        self._worker.start()

    def submit(self, payload: Any) -> Future:
        if self._closed:
            raise RuntimeError("the batcher is closed")
        future: Future = Future()
        self._queue.put(_Request(payload, future))
        return future

    def _collect(self) -> list[_Request] | None:
        first = self._queue.get()
        if first is None:
            return None
        batch, opened = [first], time.perf_counter()
        deadline = opened + self.max_wait_s
        while len(batch) < self.max_batch:
            remaining = deadline - time.perf_counter()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:  # closing: finish what is queued, then stop
                self._queue.put(None)
                break
            batch.append(item)
        self.batch_waits_s.append(time.perf_counter() - opened)
        return batch

    def _serve(self) -> None:
        while (batch := self._collect()) is not None:
            self.batch_sizes.append(len(batch))
            try:
                results = self.run_batch([r.payload for r in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"run_batch returned {len(results)} results for {len(batch)} requests")
            except Exception as exc:  # noqa: BLE001 - the error belongs to these requests, not the worker
                for r in batch:
                    r.future.set_exception(exc)
                continue
            for r, result in zip(batch, results):
                r.future.set_result(result)

    @property
    def alive(self) -> bool:
        """Whether the worker thread still runs (it stops only on :meth:`close`): a server's liveness."""
        return self._worker.is_alive()

    def close(self) -> None:
        """Answer every queued request, then stop the worker."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._worker.join()


def generation_batcher(runner, max_batch: int = 8, max_wait_ms: float = 10.0) -> DynamicBatcher:
    """A batcher whose payloads are ``(prompt_ids, max_new_tokens)``; each result is the list of new token ids.

    A batch decodes to its largest ``max_new_tokens`` and each request gets its own length.
    """
    def run(payloads):
        longest = max(n for _, n in payloads)
        outputs = runner.generate_batch([p for p, _ in payloads], longest)
        return [out[:n] for out, (_, n) in zip(outputs, payloads)]
    return DynamicBatcher(run, max_batch, max_wait_ms)


def poisson_arrivals(rate_per_s: float, n_requests: int, seed: int = 0) -> np.ndarray:
    """Arrival times (seconds from start) of ``n_requests`` with exponential gaps at ``rate_per_s``."""
    if rate_per_s <= 0 or n_requests < 1:
        raise InputError(f"rate {rate_per_s}/s and {n_requests} requests; both must be positive")
    gaps = np.random.default_rng(seed).exponential(1 / rate_per_s, n_requests)
    gaps[0] = 0.0
    return np.cumsum(gaps)


def poisson_load(batcher: DynamicBatcher, payloads: list, rate_per_s: float, p99_target_ms: float | None = None,
                 seed: int = 0, timeout_s: float = 600.0, progress: bool = True) -> dict:
    """Open-loop load: submit ``payloads`` at seeded Poisson arrival times, wait for every answer.

    Latency is answer time minus scheduled arrival time (so a generator that falls behind
    counts against the server, not for it). Returns throughput, P50/P95/P99, the number of
    requests over the target, the batch sizes formed and every answer in submission order.
    """
    arrivals = poisson_arrivals(rate_per_s, len(payloads), seed)
    done_at: list[float | None] = [None] * len(payloads)
    formed_before = len(batcher.batch_sizes)
    start = time.perf_counter()
    futures = []
    for i, (at, payload) in enumerate(zip(arrivals, payloads)):
        delay = start + at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        future = batcher.submit(payload)
        future.add_done_callback(lambda _f, i=i: done_at.__setitem__(i, time.perf_counter()))
        futures.append(future)
    answers = [f.result(timeout=timeout_s) for f in tqdm(futures, desc="answers", disable=not progress, leave=False)]
    latencies = np.array([done_at[i] - (start + arrivals[i]) for i in range(len(payloads))])
    span = max(done_at) - start
    sizes = batcher.batch_sizes[formed_before:]
    report = {"requests": len(payloads), "offered_rate_per_s": rate_per_s, "requests_per_s": len(payloads) / span,
              **percentiles_ms(latencies), "mean_batch_size": float(np.mean(sizes)) if sizes else float("nan"),
              "batches": len(sizes), "max_batch": batcher.max_batch, "max_wait_ms": batcher.max_wait_s * 1000,
              "seed": seed, "answers": answers}
    if p99_target_ms is not None:
        report["p99_target_ms"] = p99_target_ms
        report["missed_target"] = int((latencies * 1000 > p99_target_ms).sum())
    return report
