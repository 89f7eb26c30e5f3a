"""A native runtime proves it can run on this machine before its first use in a process.

A native library built for the wrong CPU (an ``-march=native`` llama.cpp copied to another
host, AMX kernels on an OS that does not grant AMX) does not raise: it kills the process with
SIGILL or SIGSEGV, taking a Jupyter kernel or a whole sweep with it. So before llama.cpp,
ONNX Runtime or OpenVINO runs in this process, its probe — a tiny *batched* evaluation through
the same code paths the variants use — runs in a child process. If the child dies, that
runtime's variants are refused with one line naming the cause and the fix; every other variant
goes on. The verdict is cached per runtime build, CPU and Python, so it costs once: written
atomically (a temporary file renamed into place), an unreadable verdict file ignored (the probe
runs again), and a failed verdict kept for :data:`FAILURE_TTL_S` only, so a crash caused by a
passing condition (a timeout on a busy machine) is retried.

``EDGEKIT_SELFTEST_PROBES="runtime=module:function,..."`` replaces a runtime's probe (tests use it
to stand in a probe that dies by a signal).
"""
from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from edgekit.core.cpu_features import cpu_flags
from edgekit.core.errors import EdgekitError
from edgekit.core.native_build import REBUILD_HINT, build_record
from edgekit.core.paths import cache_key

# runtime (a registry family) -> (the distributions whose build its probe tests, the fix if it crashes);
# the probe is its runtime module's ``self_test`` (edgekit.runtimes)
PROBES = {
    "llama.cpp": (("llama-cpp-python",), REBUILD_HINT),
    "onnxruntime": (("onnxruntime",), "reinstall onnxruntime from PyPI (`make setup`) or use the PyTorch variants"),
    "openvino": (("openvino",), "reinstall openvino from PyPI (`make setup`) or use the PyTorch variants"),
}
TIMEOUT_S = 300
FAILURE_TTL_S = 3600  # a failed verdict is re-tested after an hour
_verdicts: dict[str, "Verdict"] = {}


class RuntimeUnavailable(EdgekitError):
    """A runtime whose self-test failed on this machine: its variants cannot run here."""


@dataclass(frozen=True)
class Verdict:
    runtime: str
    ok: bool
    reason: str        # "" when ok; else one line: what happened and what to do
    seconds: float
    cached: bool = False



def module_of(runtime: str) -> str:
    """``"llama.cpp"`` -> ``"edgekit.runtimes.llama_cpp"``: where a runtime's variants, loader and self-test live."""
    return f"edgekit.runtimes.{runtime.replace('.', '_')}"


def _probe_spec(runtime: str) -> str:
    for item in filter(None, os.environ.get("EDGEKIT_SELFTEST_PROBES", "").split(",")):
        name, _, spec = item.partition("=")
        if name.strip() == runtime:
            return spec.strip()
    return f"{module_of(runtime)}:self_test"


def _cache_path(runtime: str, spec: str) -> Path:
    """One verdict file per runtime build x CPU x interpreter x probe."""
    versions = []
    for dist in PROBES[runtime][0]:
        try:
            versions.append(importlib.metadata.version(dist))
        except importlib.metadata.PackageNotFoundError:
            versions.append("missing")
    key = cache_key(runtime, spec, versions, build_record() if runtime == "llama.cpp" else None,
                    sorted(cpu_flags()), sys.executable, sys.version)
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgekit" / "selftest"
    return root / f"{runtime}-{key}.json"


def _describe(returncode: int, stderr: str, runtime: str) -> str:
    fix = PROBES[runtime][1]
    if returncode < 0:
        sig = signal.Signals(-returncode)
        what = {signal.SIGILL: "an illegal instruction (code built for instructions this CPU or OS does not enable)",
                signal.SIGSEGV: "a segmentation fault", signal.SIGBUS: "a bus error",
                signal.SIGABRT: "an abort"}.get(sig, sig.name)
        return f"{runtime} crashed with {what} in its self-test on this machine; {fix}"
    last = (stderr.strip().splitlines() or ["no output"])[-1][:300]
    return f"{runtime} failed its self-test on this machine ({last}); {fix}"


def check(runtime: str, refresh: bool = False) -> Verdict:
    """Run (or recall) ``runtime``'s self-test in a child process; never raises for a crash."""
    if runtime in _verdicts and not refresh:
        return _verdicts[runtime]
    spec = _probe_spec(runtime)
    path = _cache_path(runtime, spec)
    verdict = None if refresh else _cached_verdict(path)
    if verdict is None:
        start = time.perf_counter()
        try:
            child = subprocess.run([sys.executable, "-m", "edgekit.runtimes.selftest", spec], capture_output=True,
                                   text=True,
                                   timeout=TIMEOUT_S)
            ok = child.returncode == 0
            reason = "" if ok else _describe(child.returncode, child.stderr, runtime)
        except subprocess.TimeoutExpired:
            ok, reason = False, f"{runtime}'s self-test did not finish in {TIMEOUT_S} s; {PROBES[runtime][1]}"
        verdict = Verdict(runtime, ok, reason, round(time.perf_counter() - start, 2))
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(asdict(verdict)))
        os.replace(temporary, path)
    _verdicts[runtime] = verdict
    return verdict


def _cached_verdict(path: Path) -> Verdict | None:
    """The verdict cached at ``path``; None when absent, unreadable, or a failure older than FAILURE_TTL_S."""
    try:
        data = json.loads(path.read_text())
        verdict = Verdict(**{**data, "cached": True})
        if not isinstance(verdict.ok, bool) or not isinstance(verdict.reason, str):
            return None
        if not verdict.ok and time.time() - path.stat().st_mtime > FAILURE_TTL_S:
            return None
    except (OSError, ValueError, TypeError):
        return None
    return verdict


def require(runtime: str) -> None:
    """Raise :class:`RuntimeUnavailable` (one line) unless ``runtime`` passed its self-test here."""
    if runtime not in PROBES:
        return
    verdict = check(runtime)
    if not verdict.ok:
        raise RuntimeUnavailable(verdict.reason)


if __name__ == "__main__":
    # the child: python -m edgekit.runtimes.selftest module:function  (exit 0 = the probe ran)
    module, _, function = sys.argv[1].partition(":")
    getattr(importlib.import_module(module), function)()
