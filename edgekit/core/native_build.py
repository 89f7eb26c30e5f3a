"""Where the setup step leaves llama.cpp's converter and the record of how llama.cpp was built.

Stdlib only: ``tools/build_llama_cpp.py`` imports it before the project's dependencies exist.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import sys
from pathlib import Path

from edgekit.core.errors import VariantError

CONVERTER = "convert_hf_to_gguf.py"
# the converter imports its ``conversion`` package and the gguf-py of the same source tree
# (newer than the gguf release on PyPI), which it finds next to itself
CONVERTER_PACKAGES = ("conversion/", "gguf-py/gguf/")
BUILD_RECORD = "build.json"
REBUILD_HINT = ("rebuild it with `make llama-cpp` (or `make llama-cpp LLAMA_PORTABLE=1` for a venv shared by "
                "several CPUs)")


def llama_cpp_version() -> str:
    try:
        return importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        raise VariantError("gguf variants need llama-cpp-python; install the project's pinned dependencies "
                           "with `make setup`") from None


def converter_dir(version: str | None = None) -> Path:
    """Where llama.cpp's converter (and build record) of this llama-cpp-python version lives."""
    override = os.environ.get("EDGEKIT_LLAMA_CPP_CONVERTER")
    if override:
        return Path(override)
    return Path(sys.prefix) / "share" / "edgekit" / f"llama.cpp-{version or llama_cpp_version()}"


def build_record() -> dict | None:
    """How the installed llama.cpp was built (None: not by `make setup`, e.g. a plain pip install)."""
    try:
        return json.loads((converter_dir() / BUILD_RECORD).read_text())
    except (OSError, ValueError, VariantError):
        return None
