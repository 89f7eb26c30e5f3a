"""Which x86 instruction sets this CPU has *and the OS lets a process use* (stdlib only).

A CPU flag in /proc/cpuinfo is not permission to use it. Linux hides AVX/AVX-512 flags whose
register state it does not save, but it lists ``amx_tile`` while a process may still be refused
the AMX tile data (``XTILEDATA``): that needs the kernel to support the state component and the
process to request it with ``arch_prctl(ARCH_REQ_XCOMP_PERM)``. A binary built with
``-march=native`` on such a host compiles AMX kernels in and dies with SIGILL on first use.
This module answers both questions; ``tools/build_llama_cpp.py`` builds llama.cpp from its
answer and ``edgekit doctor`` prints it. (ggml's own runtime CPU-variant dispatch reads CPUID
only, not what the OS enables, so it is not used.)
"""
from __future__ import annotations

import ctypes
import ctypes.util
import platform
from functools import lru_cache
from pathlib import Path

# Linux x86-64: arch_prctl codes (asm/prctl.h) and the AMX tile-data state component (bit 18).
_SYS_ARCH_PRCTL = 158
_ARCH_GET_XCOMP_SUPP = 0x1021
_XFEATURE_XTILEDATA = 18

# ggml CMake switches by the /proc/cpuinfo flags that each one needs (ggml/CMakeLists.txt).
GGML_ISA = {
    "GGML_SSE42": ("sse4_2",),
    "GGML_AVX": ("avx",),
    "GGML_AVX2": ("avx2",),
    "GGML_FMA": ("fma",),
    "GGML_F16C": ("f16c",),
    "GGML_BMI2": ("bmi2",),
    "GGML_AVX_VNNI": ("avx_vnni",),
    "GGML_AVX512": ("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"),
    "GGML_AVX512_VBMI": ("avx512vbmi",),
    "GGML_AVX512_VNNI": ("avx512_vnni",),
    "GGML_AVX512_BF16": ("avx512_bf16",),
}
# x86-64-v3 (every x86-64 CPU sold since about 2015): the set a portable build assumes.
PORTABLE_ISA = ("GGML_SSE42", "GGML_AVX", "GGML_AVX2", "GGML_FMA", "GGML_F16C", "GGML_BMI2")
# Never compiled in: see the module docstring (AMX needs a per-process OS grant).
DISABLED_ISA = ("GGML_AMX_TILE", "GGML_AMX_INT8", "GGML_AMX_BF16")


@lru_cache(maxsize=1)
def _first_cpu() -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo (empty where there is none)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().split("\n\n", 1)[0].splitlines()
    except OSError:
        return {}
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in lines)}


def cpu_flags() -> frozenset[str]:
    """The flags the kernel lists for the first CPU."""
    return frozenset(_first_cpu().get("flags", "").split())


def amx_tile_data_supported() -> bool | None:
    """Whether the OS supports AMX tile data for user processes (None: cannot ask here)."""
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    mask = ctypes.c_uint64(0)
    if libc.syscall(_SYS_ARCH_PRCTL, _ARCH_GET_XCOMP_SUPP, ctypes.byref(mask)) != 0:
        return False  # kernel older than 5.16: no dynamic xstate, so no AMX for anyone
    return bool(mask.value >> _XFEATURE_XTILEDATA & 1)


def ggml_isa(portable: bool = False) -> dict[str, bool]:
    """Each ggml ISA switch on or off for a build that runs on this machine (or any x86-64-v3 one)."""
    flags = cpu_flags()
    switches = {}
    for name, needs in GGML_ISA.items():
        switches[name] = name in PORTABLE_ISA if portable else all(f in flags for f in needs)
    switches.update(dict.fromkeys(DISABLED_ISA, False))
    return switches


def cpu_model() -> str:
    """The CPU's model name as the kernel reports it (else what the platform module knows)."""
    return _first_cpu().get("model name") or platform.processor() or platform.machine()


def summary() -> dict:
    """What `edgekit doctor` prints about the CPU: vendor model, enabled ISA, the AMX trap."""
    flags = cpu_flags()
    return {
        "cpu": cpu_model(),
        "isa": [name.removeprefix("GGML_").lower() for name, on in ggml_isa().items() if on],
        "amx_listed": any(f.startswith("amx") for f in flags),
        "amx_tile_data_supported": amx_tile_data_supported(),
    }

