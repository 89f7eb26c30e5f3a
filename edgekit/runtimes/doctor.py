"""`edgekit doctor`: what this machine can run, one line per check, each ok or the fix.

Meant to be pasted into a bug report: the CPU and the instruction sets the OS enables (and
the AMX trap, see :mod:`edgekit.core.cpu_features`), how llama.cpp was built, each native runtime's
self-test verdict (:mod:`edgekit.runtimes.selftest`), GPU and CUDA, memory and disk, the versions; then
speed: the memory bandwidth (a STREAM-like triad) and matmul throughput the runs can reach on their
threads (:mod:`edgekit.measure.roofline`), and whether speed figures can be trusted right now: a fixed kernel
timed for a second while :mod:`edgekit.measure.contention` watches what else runs on the cores.
"""
from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
from dataclasses import dataclass

import psutil
import torch

from edgekit.core import cpu_features
from edgekit.core.native_build import REBUILD_HINT, build_record
from edgekit.core.paths import work_dir
from edgekit.measure import contention, roofline
from edgekit.runtimes import selftest

VERSIONED = ("torch", "transformers", "accelerate", "bitsandbytes", "optimum", "onnxruntime", "openvino", "nncf",
             "llama-cpp-python")
GIB = 1024**3


@dataclass(frozen=True)
class Check:
    topic: str
    ok: bool
    detail: str        # what was found; for a failed check, what to do follows it

    def line(self) -> str:
        return f"{'ok ' if self.ok else 'FIX'}  {self.topic:<12} {self.detail}"


def _cpu() -> list[Check]:
    info = cpu_features.summary()
    checks = [Check("cpu", True, f"{info['cpu']}, {os.cpu_count()} logical cores, {platform.machine()}; "
                                 f"the OS enables: {' '.join(info['isa']) or 'baseline only'}")]
    if info["amx_listed"]:
        granted = info["amx_tile_data_supported"]
        checks.append(Check("amx", True, "listed by the CPU and supported by the OS for user processes" if granted else
                            "listed by the CPU but the OS does not grant AMX tile data: code built with -march=native "
                            "dies with SIGILL here; edgekit's llama.cpp build leaves AMX out"))
    return checks


def _llama_build() -> Check:
    record = build_record()
    if record is None:
        return Check("llama build", False, f"not built by `make setup` (build flags unknown); {REBUILD_HINT}")
    here = cpu_features.ggml_isa()
    missing = [name for name in cpu_features.GGML_ISA if f"-D{name}=ON" in record["cmake_args"] and not here[name]]
    kind = "portable (x86-64-v3)" if record["portable"] else "for this machine's instruction sets"
    if missing:
        return Check("llama build", False, f"{record['version']} built {kind} with {', '.join(missing)}, which this "
                                           f"CPU "
                                         f"or OS lacks; {REBUILD_HINT}")
    return Check("llama build", True, f"{record['version']} built {kind}, GGML_NATIVE=OFF, no AMX")


def _runtimes() -> list[Check]:
    checks = []
    for runtime in selftest.PROBES:
        verdict = selftest.check(runtime)
        when = "cached verdict" if verdict.cached else f"{verdict.seconds:.1f} s"
        checks.append(Check(f"{runtime}", verdict.ok, f"self-test passed ({when})" if verdict.ok else verdict.reason))
    return checks


def _gpu() -> Check:
    if not torch.cuda.is_available():
        built = f"torch {torch.__version__} built without CUDA" if torch.version.cuda is None else \
            f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU"
        return Check("gpu", True, f"none: {built}; every variant runs on the CPU")
    free, total = torch.cuda.mem_get_info()
    return Check("gpu", True, f"{torch.cuda.get_device_name(0)}, CUDA {torch.version.cuda}, "
                              f"{free / GIB:.1f} of {total / GIB:.1f} GiB free")


def _memory() -> list[Check]:
    vm = psutil.virtual_memory()
    disk = shutil.disk_usage(work_dir())
    low_ram = vm.available < 2 * GIB
    low_disk = disk.free < 5 * GIB
    return [Check("memory", not low_ram, f"{vm.available / GIB:.1f} of {vm.total / GIB:.1f} GiB available"
                  + ("; close other programs: the default model needs about 1 GiB" if low_ram else "")),
            Check("disk", not low_disk, f"{disk.free / GIB:.1f} GiB free under {work_dir()}"
                  + ("; exported artifacts and baselines need several GiB: free space or set EDGEKIT_HOME" if low_disk
                     else ""))]


def _versions() -> Check:
    found = []
    for dist in VERSIONED:
        try:
            found.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{dist} missing")
    return Check("versions", True, f"python {platform.python_version()}, " + ", ".join(found))


def _speed() -> list[Check]:
    threads = torch.get_num_threads()
    checks = [Check("bandwidth", True, f"{roofline.triad_bandwidth(threads) / 1e9:.1f} GB/s (STREAM-like triad, "
                                       f"{threads} threads): the roofline every row's GB/s is a fraction of"),
              Check("matmul", True, f"{roofline.matmul_throughput(threads) / 1e9:.1f} GFLOP/s float32 "
                                    f"({roofline.MATMUL_SIZE}x{roofline.MATMUL_SIZE}, {threads} threads)")]
    if not contention.available():
        return checks + [Check("contention", True, "no /proc counters here: speed rows go unclassified")]
    reading = contention.check_now(threads)
    detail = (f"other processes {reading.others_cores:.2f} cores, steal {reading.steal_share:.0%}, "
              f"load {reading.load_1m:.2f} on {reading.cores} cores")
    if reading.contended:
        return checks + [Check("contention", False, f"{detail}: speed figures measured now are not to be "
                                                    f"trusted ({reading.reason}); stop other work or measure later")]
    return checks + [Check("contention", True, f"{detail}: quiet, speed figures can be trusted now")]


def run_checks() -> list[Check]:
    """Every check, in the order they print."""
    return [*_cpu(), _llama_build(), *_runtimes(), _gpu(), *_memory(), _versions(), *_speed()]
