"""Peak memory of a block of work: RSS on the CPU (anonymous and file-backed apart), max allocated on CUDA.

On Linux the kernel keeps the resident-set high-water mark (``VmHWM``) and lets a process
reset it (``/proc/self/clear_refs``, value 5), so the peak is exact, not sampled. The
kernel keeps no peak for the anonymous / file-backed split (memory-mapped safetensors
count as file-backed), so those two peaks come from a light sampler thread.
"""
from __future__ import annotations

import ctypes
import gc
import threading
from pathlib import Path

import psutil
import torch

_STATUS = Path("/proc/self/status")


def _status_kib(*keys: str) -> dict[str, int]:
    values = {}
    for line in _STATUS.read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in keys:
            values[key] = int(rest.split()[0]) * 1024
    return values


def rss_breakdown() -> dict[str, int]:
    """Current resident memory: total, anonymous (heap, tensors) and file-backed (mmapped files)."""
    if not _STATUS.exists():
        return {"rss_bytes": psutil.Process().memory_info().rss}
    v = _status_kib("VmRSS", "RssAnon", "RssFile", "RssShmem")
    return {"rss_bytes": v.get("VmRSS", 0), "rss_anon_bytes": v.get("RssAnon", 0),
            "rss_file_bytes": v.get("RssFile", 0) + v.get("RssShmem", 0)}


class PeakMemory:
    """Context manager recording peak RSS (and CUDA max allocated) inside the block.

    >>> with PeakMemory() as peak: ...
    >>> peak.result["peak_rss_bytes"]
    """

    def __init__(self, interval_s: float = 0.02) -> None:
        self.interval_s = interval_s
        self.result: dict[str, int] = {}
        self._stop = threading.Event()

    def __enter__(self) -> "PeakMemory":
        self._exact = _reset_hwm()
        self._peaks = rss_breakdown()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            for key, value in rss_breakdown().items():
                self._peaks[key] = max(self._peaks.get(key, 0), value)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        for key, value in rss_breakdown().items():
            self._peaks[key] = max(self._peaks.get(key, 0), value)
        peak = _status_kib("VmHWM").get("VmHWM", 0) if self._exact else self._peaks["rss_bytes"]
        self.result = {"peak_rss_bytes": max(peak, self._peaks["rss_bytes"]),
                       "peak_rss_anon_bytes": self._peaks.get("rss_anon_bytes", 0),
                       "peak_rss_file_bytes": self._peaks.get("rss_file_bytes", 0)}
        if torch.cuda.is_available():
            self.result["peak_cuda_allocated_bytes"] = torch.cuda.max_memory_allocated()


def _reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc ``malloc_trim``), so
    that the next variant's peak RSS starts from what is really still in use."""

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc
        pass
