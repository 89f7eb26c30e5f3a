"""Build llama-cpp-python for the instruction sets this OS enables, and fetch llama.cpp's converter.

``make setup`` runs this before installing the project, so pip finds llama-cpp-python already
installed instead of building it with its default ``GGML_NATIVE=ON`` (``-march=native``), which
compiles in every kernel the CPU lists, AMX included, and dies with SIGILL on hosts whose OS does
not grant AMX tile data (see ``edgekit/core/cpu_features.py``). Here the build gets
``GGML_NATIVE=OFF`` and each ISA switch set explicitly from what the OS enables; AMX stays off.
``--portable`` (``make llama-cpp LLAMA_PORTABLE=1``) builds for any x86-64-v3 CPU instead, for
a venv that moves between machines.

One download of the sdist serves both jobs: the build, and ``convert_hf_to_gguf.py`` with its
``conversion`` package and ``gguf-py`` (not in any wheel), extracted to ``edgekit.runtimes.llama_cpp.converter_dir()``
beside a ``build.json`` that records the switches (``edgekit doctor`` and the runtime self-test
read it). Idempotent: a build with the same version and switches is not redone.

    python -m tools.build_llama_cpp [--portable] [--force]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import tomllib

from edgekit.core.cpu_features import ggml_isa
from edgekit.core.native_build import BUILD_RECORD, CONVERTER, CONVERTER_PACKAGES, converter_dir

ROOT = Path(__file__).resolve().parents[1]
# Not needed by edgekit: llava/mtmd (multimodal) and the HTTP client; skipping them saves build time.
FIXED_CMAKE_ARGS = ("-DGGML_NATIVE=OFF", "-DLLAVA_BUILD=OFF", "-DLLAMA_CURL=OFF")


def pinned_version() -> str:
    """llama-cpp-python's version as pinned in pyproject.toml (the one home of the pin)."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        match = re.fullmatch(r"llama-cpp-python==(\S+)", dep)
        if match:
            return match.group(1)
    raise SystemExit("pyproject.toml pins no llama-cpp-python==VERSION")


def cmake_args(portable: bool) -> list[str]:
    if platform.machine() not in ("x86_64", "AMD64"):
        return list(FIXED_CMAKE_ARGS[1:])  # other architectures: ggml's own defaults, native off is x86 only
    isa = ggml_isa(portable)
    return [*FIXED_CMAKE_ARGS, *(f"-D{name}={'ON' if on else 'OFF'}" for name, on in isa.items())]


def installed_record(version: str) -> dict | None:
    path = converter_dir(version) / BUILD_RECORD
    try:
        record = json.loads(path.read_text())
        import llama_cpp  # noqa: F401  (the build is only as good as an importable package)
    except (OSError, ValueError, ImportError):
        return None
    return record


def fetch_sdist(version: str, into: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-qq",
                    f"llama-cpp-python=={version}", "-d", str(into)], check=True)
    return next(into.glob("llama_cpp_python-*.tar.gz"))


def extract_converter(sdist: Path, version: str, staging: Path) -> None:
    """convert_hf_to_gguf.py and the packages it imports, from the sdist's vendored llama.cpp."""
    prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
    packages = tuple(prefix + p for p in CONVERTER_PACKAGES)
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.startswith(prefix)
                   and (m.name == prefix + CONVERTER or m.name.startswith(packages))]
        for m in members:
            m.name = m.name[len(prefix):]
        tar.extractall(staging, members=members, filter="data")


def build(sdist: Path, args: list[str]) -> None:
    """pip builds the wheel from the sdist with these CMake switches; no wheel cache, so no stale build."""
    env = {**os.environ, "CMAKE_ARGS": " ".join(args),
           "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 2)}
    subprocess.run([sys.executable, "-m", "pip", "install", "-qq", "--no-deps", "--no-cache-dir", "--force-reinstall",
                    str(sdist)], check=True, env=env)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--portable", action="store_true", help="build for any x86-64-v3 CPU, not just this one")
    parser.add_argument("--force", action="store_true", help="rebuild even if the same build is installed")
    opts = parser.parse_args(argv)
    version = pinned_version()
    args = cmake_args(opts.portable)
    record = {"version": version, "portable": opts.portable, "cmake_args": args}
    if not opts.force and installed_record(version) == record:
        print(f"llama-cpp-python {version} already built with {' '.join(args)}")
        return
    print(f"building llama-cpp-python {version} with {' '.join(args)} (a few minutes)", flush=True)
    with tempfile.TemporaryDirectory(prefix="edgekit-llamacpp-") as tmp:
        sdist = fetch_sdist(version, Path(tmp))
        staging = Path(tmp) / "converter"
        extract_converter(sdist, version, staging)
        build(sdist, args)
        (staging / BUILD_RECORD).write_text(json.dumps(record, indent=1) + "\n")
        target = converter_dir(version)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(staging, target)
    print(f"llama.cpp built; converter and {BUILD_RECORD} in {target}")


if __name__ == "__main__":
    main()
