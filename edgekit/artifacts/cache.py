"""The artifact cache: a variant's artifact is exported once into the work folder and reused while intact.

The one rule of which options change an artifact (:func:`artifact_name`) and the one way a cached artifact is
made (:func:`cached_folder`: verified before reuse, rebuilt when damaged, written staged) serve every runtime,
through :func:`edgekit.runtimes.cached_artifact`.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable

from edgekit.artifacts.manifest import verify_artifact
from edgekit.core.caches import enforce_cap, touch
from edgekit.core.errors import ArtifactError
from edgekit.core.paths import staged


def artifact_name(variant) -> str:
    """The one rule of which options change an artifact: the variant's name plus every option its entry does
    not list as a runtime option (threads, device... are read at load): ``ov-int4-g32:sym=true``."""
    kept = [(k, str(v).lower() if isinstance(v, bool) else v) for k, v in variant.options
            if k not in variant.entry.runtime_options]
    return variant.name + (":" + ",".join(f"{k}={v}" for k, v in kept) if kept else "")


def cached_folder(folder: str | Path, export: Callable[[Path], Any]) -> Path:
    """``folder`` if it holds an intact artifact; otherwise build it with ``export(out_dir)``, staged
    (then the work caches' size cap applies, :mod:`edgekit.core.caches`).

    A damaged cached artifact is rebuilt rather than used. Every runtime's variant cache
    (ONNX Runtime, OpenVINO, llama.cpp) goes through here.
    """
    folder = Path(folder)
    if folder.exists():
        try:
            verify_artifact(folder)
            touch(folder)
            return folder
        except ArtifactError:
            shutil.rmtree(folder)
    staged(folder, export)
    verify_artifact(folder)
    enforce_cap()
    return folder
