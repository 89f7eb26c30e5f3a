"""Speed explained by bandwidth: what a decoded token moves, against what this machine can move.

Decoding one token reads every weight once as it is held (packed codes and their scales) and the KV
cache of every earlier position, so a decoder that streams at the machine's memory bandwidth decodes
``bandwidth / bytes per token`` tokens a second and no faster (the roofline of Williams, Waterman &
Patterson 2009; gpt-fast prints achieved GB/s beside tokens/s for the same reason). Here:

- :func:`triad_bandwidth`: achievable memory bandwidth, a STREAM-like triad ``a = b + s * c``
  (McCalpin's STREAM; one fused ``torch.add`` over three 32 MiB float32 arrays, larger than the
  caches) on the threads the runs use, counted as STREAM counts it (3 arrays x 4 bytes per element),
  the best of 5;
- :func:`matmul_throughput`: float32 matrix-product FLOP/s (a 1024 x 1024 product, the best of 3) on
  the same threads;
- :func:`roofline_figures`: a row's bytes per decoded token (weights as held + the KV cache read at
  the mean context of its timed tokens), achieved GB/s (bytes per token x decode tokens/s), their
  fraction of the measured triad bandwidth, the share of a token's time its multiply-adds (2 per
  parameter) take at the measured matmul rate, and a verdict.

The verdict's thresholds:

- **memory-bound** when achieved bandwidth is at least ``MEMORY_BOUND_FRACTION`` (50%) of the
  triad's: the token's time is spent streaming bytes, and fewer bytes (lower bits) decode faster;
- **compute-bound** when the multiply-adds alone, at the measured matmul rate, take at least
  ``COMPUTE_BOUND_FRACTION`` (50%) of a token's time;
- **compute-bound (dequantize)** when neither holds, the weights are held in fewer bytes than
  float16 (under 2 bytes a parameter) and the row decodes slower than its baseline beyond its
  interval: it moves fewer bytes yet takes longer, so the extra time is the work of unpacking and
  scaling the weights;
- **overhead-bound** otherwise: the token's time is far above what its bytes and its arithmetic
  need, a fixed per-token cost (the Python decode loop, per-layer dispatch) dominates, as on the
  6.8M default model; fewer bytes cannot help, fewer calls can (``compile=true``).
"""
from __future__ import annotations

import time
from functools import lru_cache

import torch

MEMORY_BOUND_FRACTION = 0.5
COMPUTE_BOUND_FRACTION = 0.5
TRIAD_ELEMENTS = 8 << 20      # 32 MiB float32 per array
MATMUL_SIZE = 1024


class _threads:
    def __init__(self, threads: int | None) -> None:
        self.threads = threads

    def __enter__(self):
        self.previous = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)

    def __exit__(self, *exc):
        torch.set_num_threads(self.previous)


@lru_cache(maxsize=None)
def triad_bandwidth(threads: int | None = None, elements: int = TRIAD_ELEMENTS, trials: int = 5) -> float:
    """Bytes a second of the STREAM triad ``a = b + 3 c`` on ``threads`` threads (torch's count when None)."""
    with _threads(threads):
        b, c = torch.rand(elements), torch.rand(elements)
        a = torch.empty(elements)
        best = float("inf")
        for _ in range(trials):
            start = time.perf_counter()
            torch.add(b, c, alpha=3.0, out=a)
            best = min(best, time.perf_counter() - start)
    return 3 * 4 * elements / best


@lru_cache(maxsize=None)
def matmul_throughput(threads: int | None = None, size: int = MATMUL_SIZE, trials: int = 3) -> float:
    """float32 FLOP/s of a ``size`` x ``size`` matrix product on ``threads`` threads (torch's count when None)."""
    with _threads(threads):
        x, y = torch.rand(size, size), torch.rand(size, size)
        torch.mm(x, y)
        best = float("inf")
        for _ in range(trials):
            start = time.perf_counter()
            torch.mm(x, y)
            best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best


def verdict(bandwidth_fraction: float, compute_fraction: float, bytes_per_parameter: float,
            slower_than_baseline: bool) -> str:
    """memory-bound, compute-bound, compute-bound (dequantize) or overhead-bound, by the module's thresholds."""
    if bandwidth_fraction >= MEMORY_BOUND_FRACTION:
        return "memory-bound"
    if compute_fraction >= COMPUTE_BOUND_FRACTION:
        return "compute-bound"
    if bytes_per_parameter < 2 and slower_than_baseline:
        return "compute-bound (dequantize)"
    return "overhead-bound"


def roofline_figures(weight_bytes: int, kv_bytes_read: int, parameters: int, tokens_per_s: float,
                     peak_bytes_per_s: float, peak_flops: float, slower_than_baseline: bool = False) -> dict:
    """A row's bytes per decoded token, achieved GB/s, fraction of the measured peak, compute share and verdict."""
    moved = weight_bytes + kv_bytes_read
    achieved = moved * tokens_per_s
    fraction = achieved / peak_bytes_per_s
    compute = 2 * parameters * tokens_per_s / peak_flops
    return {"bytes_per_token": int(moved), "bandwidth_gbps": achieved / 1e9, "bandwidth_fraction": fraction,
            "peak_bandwidth_gbps": peak_bytes_per_s / 1e9, "compute_fraction": compute,
            "bound": verdict(fraction, compute, weight_bytes / max(parameters, 1), slower_than_baseline)}
