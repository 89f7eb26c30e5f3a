"""Artifacts: a shippable folder of model files, tokenizer and a ``manifest.json`` that vouches for them.

The manifest records the schema version, the versions that built it (edgekit, the runtime,
the ONNX opset where there is one), the quantization settings, the sha256 and size of every
file, the input/output signature, the evaluation summary and the recommended runtime
settings. :func:`verify_artifact` checks all of it before anything runs and refuses, with a
one-line reason, an artifact whose files were changed or are missing, or whose schema or
opset is newer than this runtime supports. Every runtime (ONNX Runtime, OpenVINO,
llama.cpp) writes the same manifest and registers a loader for its ``runtime`` name.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from edgekit.core import __version__
from edgekit.core.errors import ArtifactError
from edgekit.models.load import resolve_source
from edgekit.models.names import MODELS

SIDE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json", "tokenizer.model")
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
LOADERS: dict[str, tuple[Callable[..., Any], Callable[[], int | None]]] = {}


def artifact_loader(runtime: str, max_opset: Callable[[], int | None] = lambda: None):
    """Decorator: ``loader(manifest, **runtime_options) -> Runner`` for verified artifacts of ``runtime``.

    ``max_opset`` returns the newest ONNX opset the installed runtime supports (None: no opset).
    """
    def wrap(fn):
        LOADERS[runtime] = (fn, max_opset)
        return fn
    return wrap


def copy_side_files(source: str, out_dir: str | Path) -> list[str]:
    """Copy the tokenizer and config files of a local model folder (those that exist)."""
    resolved = Path(resolve_source(source))
    copied = []
    for name in SIDE_FILES:
        if (resolved / name).is_file():
            shutil.copy2(resolved / name, Path(out_dir) / name)
            copied.append(name)
    return copied


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Manifest:
    path: Path
    data: dict

    @property
    def runtime(self) -> str:
        return self.data["runtime"]["name"]

    @property
    def variant(self) -> str:
        return self.data["variant"]

    @property
    def checksum(self) -> str:
        """One digest for the whole artifact: sha256 over the manifest's file list."""
        listing = json.dumps(self.data["files"], sort_keys=True).encode()
        return hashlib.sha256(listing).hexdigest()


def portable_model(model: str) -> str:
    """How a manifest names its source model without the path of the machine that made it: a named model's
    name (``default``), a hub id as given, a folder under the working directory relative to it, else the
    folder's own name."""
    text = str(model)
    path = Path(text).expanduser()
    if text in MODELS or not (path.is_absolute() or path.exists()):
        return text
    resolved = path.resolve()
    for name, named in MODELS.items():
        if Path(named.folder).resolve() == resolved:
            return name
    try:
        return str(resolved.relative_to(Path.cwd().resolve()))
    except ValueError:
        return resolved.name


def write_manifest(folder: str | Path, *, variant: str, runtime: str, runtime_version: str, model: str,
                   quantization: dict, signature: dict, opset: int | None = None,
                   evaluation: dict | None = None, runtime_settings: dict | None = None,
                   extra: dict | None = None) -> Manifest:
    """Hash every file in ``folder`` (except the manifest) and write ``manifest.json``."""

    folder = Path(folder)
    files = {str(p.relative_to(folder)): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST}
    data = {"schema_version": SCHEMA_VERSION, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "edgekit_version": __version__, "variant": variant, "source_model": portable_model(model),
            "runtime": {"name": runtime, "version": runtime_version}, "opset": opset,
            "quantization": quantization, "signature": signature, "evaluation": evaluation or {},
            "runtime_settings": runtime_settings or {}, "files": files, **(extra or {})}
    (folder / MANIFEST).write_text(json.dumps(data, indent=2))
    return Manifest(folder, data)


def update_manifest(folder: str | Path, **fields: Any) -> Manifest:
    """Set top-level fields (``evaluation``, ``runtime_settings``) of an intact artifact; files are re-checked first."""
    manifest = verify_artifact(folder)
    data = {**manifest.data, **fields}
    (Path(folder) / MANIFEST).write_text(json.dumps(data, indent=2))
    return Manifest(Path(folder), data)


def read_manifest(folder: str | Path) -> Manifest:
    folder = Path(folder)
    if not folder.is_dir():
        raise ArtifactError(f"{folder} is not an artifact folder; pass the folder `edgekit export` wrote")
    path = folder / MANIFEST
    if not path.exists():
        raise ArtifactError(f"{folder} has no {MANIFEST}; it is not an edgekit artifact (re-export it)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path} is not valid JSON ({exc.msg}); the manifest was damaged, re-export the artifact") from None
    for key in ("schema_version", "variant", "runtime", "files"):
        if key not in data:
            raise ArtifactError(f"{path} lacks {key!r}; the manifest is incomplete, re-export the artifact")
    return Manifest(folder, data)


def verify_artifact(folder: str | Path, supported_opset: int | None = None) -> Manifest:
    """Check schema, runtime compatibility and every file's sha256; return the manifest or raise ArtifactError."""
    manifest = read_manifest(folder)
    data, folder = manifest.data, Path(folder)
    if data["schema_version"] > SCHEMA_VERSION:
        raise ArtifactError(f"artifact schema {data['schema_version']} is newer than this edgekit supports "
                            f"({SCHEMA_VERSION}); upgrade edgekit")
    if supported_opset is not None and data.get("opset") and data["opset"] > supported_opset:
        raise ArtifactError(f"artifact needs ONNX opset {data['opset']} but this runtime supports up to "
                            f"{supported_opset}; upgrade onnxruntime or re-export with a lower opset")
    for name, info in data["files"].items():
        path = folder / name
        if not path.is_file():
            raise ArtifactError(f"artifact file {name} is missing; the artifact is incomplete, copy it again")
        if path.stat().st_size != info["bytes"] or sha256_file(path) != info["sha256"]:
            raise ArtifactError(f"artifact file {name} does not match its sha256 in the manifest; "
                                "it was changed or corrupted, re-export or copy the artifact again")
    extra = sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                   if p.is_file() and p.name != MANIFEST and str(p.relative_to(folder)) not in data["files"])
    if extra:
        raise ArtifactError(f"artifact holds files its manifest does not list ({', '.join(extra[:3])}); "
                            "remove them or re-export")
    return manifest
