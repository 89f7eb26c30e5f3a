"""Single-run latency of greedy decoding through any Runner (TTFT, decode tokens/s, per-token percentiles),
warmed up first; the speed protocol (:mod:`edgekit.measure.speed`) repeats these timed generations in rounds.
"""
from __future__ import annotations

import math
import time
from functools import lru_cache

import numpy as np
import torch

from edgekit.core.errors import InputError
from edgekit.core.progress import tqdm


def measure_latency(runner, prompt_ids: torch.Tensor, new_tokens: int = 32, runs: int = 5,
                    warmup: int = 1, progress: bool = True, max_warmup: int = 12,
                    steady_within: float = 0.1, max_warmup_s: float = 120.0) -> dict:
    """Time to first token and per-token decode latency over ``runs`` timed generations, once steady.

    Warm-up is not a fixed count: generations run (at least ``warmup``, at most ``max_warmup``)
    until the median decode gap of one is within ``steady_within`` of the previous one's, because
    the first tokens of a process run several times slower (allocator, kernel selection, caches;
    on a GPU the first ~150 tokens, 2-4x). That effect lasts a number of tokens, not of seconds, so
    warm-up also ends once it has taken ``max_warmup_s``: a 7B decoding at one token a second on a
    CPU is warm after its first run, and ten more would cost ten minutes a row. ``warmup_runs``
    says how many it took, ``steady`` whether it got there. On CUDA each token is stamped with a
    CUDA event (read after the run), elsewhere with ``time.perf_counter``.

    TTFT is the median over runs; decode tokens/s is the median of each run's
    (tokens - 1) / (time of last token - time of first token); P50/P95/P99 are taken over
    every decode-step gap of every run pooled. As gpt-fast reports it, the achieved bandwidth is
    weight bytes x decode tokens/s (every weight is read once a token) and its fraction is of the
    bandwidth a large copy reaches on the same device (:func:`device_bandwidth`).
    """
    if new_tokens < 2:
        raise InputError("new_tokens must be at least 2 to time decoding")
    prompt = prompt_ids.reshape(1, -1)
    device = getattr(runner, "device", None)  # a torch runner's; other runtimes time on the host
    device = device if isinstance(device, torch.device) else torch.device("cpu")
    bar = tqdm(desc=f"latency {runner.name}", unit="run", disable=not progress, leave=False)
    previous, warmup_runs, steady, started = None, 0, False, time.perf_counter()
    while warmup_runs < max_warmup and not (warmup_runs >= warmup
                                            and (steady or time.perf_counter() - started > max_warmup_s)):
        gap = float(np.median(np.diff(timed_generation(runner, prompt, new_tokens, device)[1:])))
        steady = previous is not None and abs(gap - previous) <= steady_within * previous
        previous, warmup_runs = gap, warmup_runs + 1
        bar.update()
    ttfts, rates, gaps = [], [], []
    for _ in range(runs):
        stamps = timed_generation(runner, prompt, new_tokens, device)
        ttfts.append(stamps[1] - stamps[0])
        gaps.extend(np.diff(stamps[1:]))
        rates.append((new_tokens - 1) / (stamps[-1] - stamps[1]))
        bar.update()
    bar.close()
    gaps_ms = np.asarray(gaps) * 1000
    indicative = percentiles_indicative(len(gaps_ms))
    rate = float(np.median(rates))
    achieved = runner.weight_bytes() * rate
    out = {"ttft_ms": float(np.median(ttfts) * 1000), "decode_tokens_per_s": rate,
           "latency_ms_p50": float(np.percentile(gaps_ms, 50)), "latency_ms_p95": float(np.percentile(gaps_ms, 95)),
           "latency_ms_p99": float(np.percentile(gaps_ms, 99)), "latency_samples": len(gaps_ms),
           "latency_indicative": indicative, "prompt_tokens": int(prompt.shape[1]),
           "new_tokens": new_tokens, "latency_runs": runs, "warmup_runs": warmup_runs, "steady": steady,
           "timer": "cuda events" if device.type == "cuda" else "perf_counter",
           "achieved_bandwidth_gb_s": achieved / 1e9,
           "bandwidth_fraction": achieved / device_bandwidth(str(device))}
    if getattr(runner, "compute_path", None):
        out["compute_path"] = runner.compute_path
    return out


TAIL_SAMPLES = 5


def percentiles_indicative(samples: int, percentiles=(50, 95, 99)) -> list[str]:
    """The percentiles that ``samples`` gaps cannot pin down: fewer than ``TAIL_SAMPLES`` of them beyond it.

    A P99 from 16 gaps is the largest gap; from 155 it rests on 1-2 of them. Such a figure is
    indicative (shown, flagged), not a measurement: time more runs or more tokens for it."""
    return [f"p{q}" for q in percentiles if samples * (1 - q / 100) < TAIL_SAMPLES]


def timed_generation(runner, prompt: torch.Tensor, new_tokens: int, device: torch.device) -> list[float]:
    """Seconds of the start and of each token of one greedy generation (CUDA events on a GPU)."""
    if device.type == "cuda":
        events = [torch.cuda.Event(enable_timing=True)]
        events[0].record()
        for _ in runner.generate_stream(prompt, new_tokens):
            events.append(torch.cuda.Event(enable_timing=True))
            events[-1].record()
        events[-1].synchronize()
        stamps = [0.0] + [events[0].elapsed_time(e) / 1000 for e in events[1:]]
    else:
        stamps = [time.perf_counter()]
        for _ in runner.generate_stream(prompt, new_tokens):
            stamps.append(time.perf_counter())
    if len(stamps) - 1 != new_tokens:
        raise InputError(f"{runner.name} produced {len(stamps) - 1} tokens instead of {new_tokens}")
    return stamps


@lru_cache(maxsize=None)
def device_bandwidth(device: str = "cpu") -> float:
    """Bytes a second a large tensor copy moves on ``device`` (read + write), the best of five.

    The yardstick for achieved bandwidth: what this process can really stream through memory,
    not a datasheet peak. 256 MiB on a GPU, 64 MiB on a CPU (larger than its caches)."""
    dev = torch.device(device)
    size = (256 if dev.type == "cuda" else 64) << 20
    src = torch.empty(size, dtype=torch.uint8, device=dev).fill_(1)
    dst = torch.empty_like(src)
    best = math.inf
    for _ in range(5):
        if dev.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            dst.copy_(src)
            end.record()
            end.synchronize()
            best = min(best, start.elapsed_time(end) / 1000)
        else:
            begin = time.perf_counter()
            dst.copy_(src)
            best = min(best, time.perf_counter() - begin)
    return 2 * size / best
