"""The runtimes a variant can run in, each a subpackage of the same shape, and the three doors to them.

``build_runner`` (variant -> Runner), ``export_artifact`` (variant -> a verified artifact folder) and
``load_artifact`` (artifact -> Runner) are the only ways in. Each runtime subpackage registers its
variants in :mod:`edgekit.variants.registry`; the native ones (ONNX Runtime, OpenVINO, llama.cpp) also
register an artifact loader (:func:`edgekit.artifacts.manifest.artifact_loader`) and offer ``self_test()``,
the probe :mod:`edgekit.runtimes.selftest` runs in a child process so that a native crash refuses the
runtime in one line. A runtime never imports a sibling runtime: graph code ONNX Runtime and OpenVINO share
lives in :mod:`edgekit.runtimes.onnx`.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Callable

from edgekit.artifacts.cache import artifact_name, verified_cache
from edgekit.artifacts.manifest import LOADERS, Manifest, check_compatible, read_manifest, verify_artifact
from edgekit.core.errors import ArtifactError, VariantError
from edgekit.core.paths import staged, work_dir
from edgekit.models.load import load_tokenizer, model_key
from edgekit.runtimes import selftest
from edgekit.runtimes.selftest import module_of
from edgekit.variants.registry import Variant, entries


def build_runner(variant: "str | Variant", source: str = "default", tokenizer=None):
    """Build the Runner for ``variant`` of the model at ``source``."""
    variant = Variant.parse(variant)
    selftest.require(variant.family)  # a native runtime that would crash here is refused in one line
    tokenizer = tokenizer or load_tokenizer(source)
    runner = variant.entry.builder(variant, source, tokenizer)
    if variant.option("compile"):  # a RUNNER_OPTIONS option, so only PyTorch runners get here
        runner.compile_decoding()
    return runner


def export_artifact(variant: "str | Variant", source: str, out_dir) -> Any:
    """Write the artifact of an exportable variant (onnx-*, gguf-*, ov-*) to ``out_dir``; returns its Manifest."""
    variant = Variant.parse(variant)
    exporter = variant.entry.exporter
    if exporter is None:
        exportable = [e.pattern.pattern for e in entries() if e.exporter is not None]
        raise VariantError(f"variant {variant.name!r} has no artifact to export; exportable: "
                           f"{', '.join(exportable) or 'none installed'}")
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ArtifactError(f"{out_dir} already exists and is not empty; choose a new folder or delete it first")
    selftest.require(variant.family)
    if out_dir.exists():
        out_dir.rmdir()
    staged(out_dir, lambda staging: exporter(variant, source, staging))
    return read_manifest(out_dir)


def runtime_loader(runtime: str) -> tuple[Callable[..., Any], Callable[[], int | None]]:
    """The loader ``runtime``'s module registered (the module is imported on first use)."""
    if runtime not in LOADERS:
        try:
            importlib.import_module(module_of(runtime))
        except ModuleNotFoundError:
            pass
    if runtime not in LOADERS:
        raise ArtifactError(f"artifact runtime {runtime!r} is not supported here; install its runtime "
                            f"(supported: {', '.join(sorted(LOADERS)) or 'none installed'})")
    return LOADERS[runtime]


def load_artifact(folder: str | Path | Manifest, expect_checksum: str | None = None, **runtime_options: Any):
    """Verify the artifact, then build the Runner its runtime registered (recommended settings applied).

    ``folder`` may be a manifest :func:`verify_artifact` returned: it is not hashed again (``serve``
    verifies once at start). Each runtime's loader has the memory guard admit the load from the
    artifact's own bytes first (:func:`edgekit.memory.guard.admit_artifact`). Either way the files must still be the
    ones hashed once
    the runtime has loaded them (:meth:`Manifest.confirm_unchanged`), else the runner is closed and refused.
    """
    if isinstance(folder, Manifest):
        manifest = folder
        if expect_checksum is not None and manifest.checksum != expect_checksum.strip().lower():
            raise ArtifactError(f"artifact checksum {manifest.checksum} is not the expected "
                                f"{expect_checksum.strip()[:64]}; this is not the artifact you pinned")
    else:
        manifest = read_manifest(folder)
    loader, max_opset = runtime_loader(manifest.runtime)
    selftest.require(manifest.runtime)
    if isinstance(folder, Manifest):
        check_compatible(manifest, max_opset())
        manifest.confirm_unchanged()
    else:
        manifest = verify_artifact(folder, supported_opset=max_opset(), expect_checksum=expect_checksum)
    runner = loader(manifest, **runtime_options)
    try:
        manifest.confirm_unchanged()
    except ArtifactError:
        runner.close()
        raise
    return runner


def cached_manifest(variant: "str | Variant", source: str) -> Manifest:
    """The verified manifest of an exportable ``variant`` of ``source`` under the work folder: exported on first
    use, reused while intact, re-exported if damaged (one folder per model version and :func:`artifact_name`).
    ``load_artifact`` takes it without hashing the files again."""
    variant = Variant.parse(variant)
    folder = work_dir() / "artifacts" / model_key(source) / artifact_name(variant).replace(":", "_")
    return verified_cache(folder, lambda out: variant.entry.exporter(variant, source, out))


def cached_artifact(variant: "str | Variant", source: str) -> Path:
    """The folder of :func:`cached_manifest`'s artifact (for tools that read its files)."""
    return Path(cached_manifest(variant, source).path)
