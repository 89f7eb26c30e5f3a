"""The artifact cache: a variant's artifact is exported once into the work folder and reused while intact.

The one rule of which options change an artifact (:func:`artifact_name`) and the one way a cached artifact is
made (:func:`verified_cache`: verified before reuse, rebuilt when damaged, written staged) serve every runtime,
through :func:`edgekit.runtimes.cached_artifact`.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable

from edgekit.artifacts.manifest import Manifest, verify_artifact
from edgekit.core.caches import enforce_cap, touch
from edgekit.core.errors import ArtifactError
from edgekit.core.paths import staged


def artifact_name(variant) -> str:
    """The one rule of which options change an artifact: the variant's name plus every option its entry does
    not list as a runtime option (threads, device... are read at load): ``ov-int4-g32:sym=true``."""
    kept = [(k, str(v).lower() if isinstance(v, bool) else v) for k, v in variant.options
            if k not in variant.entry.runtime_options]
    return variant.name + (":" + ",".join(f"{k}={v}" for k, v in kept) if kept else "")


def verified_cache(folder: str | Path, export: Callable[[Path], Any]) -> Manifest:
    """The verified manifest of the artifact in ``folder`` if it is intact; otherwise the artifact is built with
    ``export(out_dir)``, staged (then the work caches' size cap applies, :mod:`edgekit.core.caches`), and verified.

    A damaged cached artifact is rebuilt rather than used. Every runtime's variant cache (ONNX Runtime,
    OpenVINO, llama.cpp) goes through here, and hands the manifest to ``load_artifact`` so the files are hashed
    once per load, not twice.
    """
    folder = Path(folder)
    if folder.exists():
        try:
            manifest = verify_artifact(folder)
            touch(folder)
            return manifest
        except ArtifactError:
            shutil.rmtree(folder)
    staged(folder, export)
    manifest = verify_artifact(folder)
    enforce_cap()  # least recently used first: never the artifact just built
    return manifest
