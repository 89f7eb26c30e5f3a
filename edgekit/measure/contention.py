"""Contention detected, not guessed: was this process given the cores it asked for while it was timed?

A speed figure taken while another process ran on the cores the run uses measures the neighbour as much
as the variant. Around every timed repetition the speed protocol (:mod:`edgekit.measure.speed`) takes a
:class:`Snapshot`: ``/proc/loadavg`` and ``/proc/stat`` as text (every core's busy, idle and steal time,
the run queue), this process's CPU time (``time.process_time``) and its thread count, and the wall
clock. :func:`classify` is a pure function of two snapshots (so tests feed it recorded text) that
reads the window between them:

- **other processes' CPU**: the cores' busy time (user, nice, system, irq, softirq) minus this
  process's own CPU time, in cores (seconds of CPU per second of wall);
- **steal**: the share of the cores' time a hypervisor gave to other guests (VMs, cloud runners);
- this process's own cores (CPU time / wall) against the threads it runs, the 1-minute load and the
  run queue (``procs_running``), recorded as evidence beside the verdict.

The verdict, with its thresholds:

- *contended* when other processes used more than the cores the run leaves free
  (``cores - threads``) by over ``OTHERS_TOLERANCE_CORES`` (0.3 of a core) plus the counters'
  resolution (``/proc/stat`` counts in ticks of 1/``SC_CLK_TCK`` s, 10 ms: over a window of
  ``wall`` seconds the busy time is known to ``cores`` ticks, so ``cores / (hz * wall)`` cores are
  added to the tolerance), or when steal exceeds ``STEAL_MAX_SHARE`` (5%) of the cores' time;
- *quiet* otherwise.

Ticks make a window of a few tens of milliseconds (one short repetition of a 6.8M model) too coarse
to read: :func:`classify_series` widens each repetition's window to its neighbouring snapshots until it
lasts ``MIN_WINDOW_S`` (0.25 s), so a repetition is judged on the quarter second around it.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

OTHERS_TOLERANCE_CORES = 0.3
STEAL_MAX_SHARE = 0.05
MIN_WINDOW_S = 0.25
BUSY_FIELDS = ("user", "nice", "system", "irq", "softirq")
STAT_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


@dataclass(frozen=True)
class Snapshot:
    """What the machine and this process had done up to one instant (raw text kept, parsed on reading)."""

    wall_s: float          # time.monotonic()
    process_cpu_s: float   # CPU time of this process, every thread (time.process_time())
    threads: int           # threads of this process
    loadavg: str           # /proc/loadavg
    stat: str              # /proc/stat


@dataclass(frozen=True)
class Reading:
    """The window between two snapshots, and its verdict."""

    contended: bool
    reason: str
    wall_s: float
    cores: int
    threads_used: int
    own_cores: float       # this process's CPU seconds per wall second
    others_cores: float    # every other process's
    steal_share: float     # of all cores' time
    load_1m: float
    procs_running: int
    process_threads: int

    def as_dict(self) -> dict:
        return asdict(self)


def snapshot() -> Snapshot:
    """The machine's counters and this process's CPU time, now (Linux ``/proc``)."""
    status = Path("/proc/self/status").read_text()
    threads = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("Threads:")), 1)
    return Snapshot(time.monotonic(), time.process_time(), threads, Path("/proc/loadavg").read_text(),
                    Path("/proc/stat").read_text())


def available() -> bool:
    """Whether this system has the counters (Linux); elsewhere repetitions go unclassified."""
    return Path("/proc/stat").is_file() and Path("/proc/loadavg").is_file()


def parse_stat(text: str) -> dict:
    """``/proc/stat`` -> the summed ``cpu`` line's fields in ticks, the number of cores and ``procs_running``."""
    out = {"cores": 0, "procs_running": 0}
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "cpu":
            out.update(zip(STAT_FIELDS, (int(v) for v in parts[1:1 + len(STAT_FIELDS)])))
        elif parts[0].startswith("cpu"):
            out["cores"] += 1
        elif parts[0] == "procs_running":
            out["procs_running"] = int(parts[1])
    return out


def classify(before: Snapshot, after: Snapshot, threads_used: int, hz: int | None = None) -> Reading:
    """Quiet or contended over the window from ``before`` to ``after``, for a run on ``threads_used`` threads.

    ``hz``: ticks a second of ``/proc/stat`` (``os.sysconf("SC_CLK_TCK")`` when None)."""
    hz = hz or os.sysconf("SC_CLK_TCK")
    a, b = parse_stat(before.stat), parse_stat(after.stat)
    cores = max(b["cores"], 1)
    wall = max(after.wall_s - before.wall_s, 1e-9)
    ticks = {k: b.get(k, 0) - a.get(k, 0) for k in STAT_FIELDS}
    busy_s = sum(ticks[k] for k in BUSY_FIELDS) / hz
    own_s = after.process_cpu_s - before.process_cpu_s
    others = max(busy_s - own_s, 0.0) / wall
    total_ticks = sum(ticks.values())
    steal = ticks["steal"] / total_ticks if total_ticks > 0 else 0.0
    free = cores - min(threads_used, cores)
    allowed = free + OTHERS_TOLERANCE_CORES + cores / (hz * wall)
    reasons = []
    if others > allowed:
        reasons.append(f"other processes used {others:.2f} cores, {free} free for them")
    if steal > STEAL_MAX_SHARE:
        reasons.append(f"steal {steal:.0%} of the cores' time")
    return Reading(contended=bool(reasons), reason="; ".join(reasons) or "quiet", wall_s=wall, cores=cores,
                   threads_used=threads_used, own_cores=own_s / wall, others_cores=others, steal_share=steal,
                   load_1m=float(after.loadavg.split()[0]), procs_running=b["procs_running"],
                   process_threads=after.threads)


def classify_series(snapshots: list[Snapshot], threads_used: int, hz: int | None = None) -> list[Reading]:
    """One reading per interval between consecutive ``snapshots`` (repetition ``i`` lies between snapshots
    ``i`` and ``i + 1``), each window widened on both sides to the neighbouring snapshots until it lasts
    ``MIN_WINDOW_S`` (or spans the whole series)."""
    readings = []
    last = len(snapshots) - 1
    for i in range(last):
        lo, hi = i, i + 1
        while snapshots[hi].wall_s - snapshots[lo].wall_s < MIN_WINDOW_S and (lo > 0 or hi < last):
            lo, hi = max(lo - 1, 0), min(hi + 1, last)
        readings.append(classify(snapshots[lo], snapshots[hi], threads_used, hz))
    return readings


def check_now(threads_used: int, seconds: float = 1.0) -> Reading:
    """Run a fixed kernel (a 256 x 256 float32 matrix product, over and over) on ``threads_used`` threads for
    ``seconds`` and classify that window: can speed figures be trusted on this machine right now?"""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads_used)
    try:
        a = torch.rand(256, 256)
        before = snapshot()
        while time.monotonic() - before.wall_s < seconds:
            a = torch.tanh(a @ a)
        after = snapshot()
    finally:
        torch.set_num_threads(previous)
    return classify(before, after, threads_used)
