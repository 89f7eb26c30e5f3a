"""Artifacts: a shippable folder of model files, tokenizer and a ``manifest.json`` that vouches for them.

The manifest records the schema version, the versions that built it (edgekit, the runtime,
the ONNX opset where there is one), the quantization settings, the sha256 and size of every
file, the input/output signature, the evaluation summary and the recommended runtime
settings. :func:`verify_artifact` checks all of it before anything runs and refuses, with a
one-line reason, an artifact whose files were changed or are missing, whose manifest names a
path outside the folder, reaches a file through a symlink or has a field of the wrong type, or
whose schema or opset is newer than this runtime supports. Each file is hashed once, from the
descriptor its identity is taken from, and :func:`load_artifact` checks after the runtime
loaded the files by path that they are still those very files (same inode, size and times):
runtimes open files by path (llama.cpp maps the GGUF, ONNX Runtime resolves external data next
to the model), so "the bytes hashed are the bytes loaded" is kept by refusing any change in
between rather than by loading from memory. Every runtime (ONNX Runtime, OpenVINO,
llama.cpp) writes the same manifest and registers a loader for its ``runtime`` name.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from edgekit.core import __version__
from edgekit.core.errors import ArtifactError
from edgekit.models.load import resolve_source
from edgekit.models.names import MODELS

SIDE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json", "tokenizer.model", "chat_template.jinja", "chat_template.json")
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


Identity = tuple[int, int, int, int, int]  # device, inode, size, mtime_ns, ctime_ns


def _identity(fd: int) -> Identity:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


@dataclass(frozen=True)
class Manifest:
    path: Path
    data: dict
    # name -> identity of the file that was hashed, set by verify_artifact (the load checks it did not change)
    seal: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def runtime(self) -> str:
        return self.data["runtime"]["name"]

    @property
    def variant(self) -> str:
        return self.data["variant"]

    @property
    def checksum(self) -> str:
        """One digest for the whole artifact: sha256 over the manifest's file list (what ``--expect-checksum``
        pins)."""
        listing = json.dumps(self.data["files"], sort_keys=True).encode()
        return hashlib.sha256(listing).hexdigest()

    def confirm_unchanged(self) -> None:
        """Raise ArtifactError unless every file is still the very file that was hashed (same inode, size,
        modification and change times): what a runtime loaded by path is then what was verified."""
        if not self.seal:
            raise ArtifactError("this manifest was read, not verified; call verify_artifact first")
        for name, identity in self.seal.items():
            try:
                fd = _open_inside(self.path, name)
            except OSError:
                fd = None
            try:
                if fd is None or _identity(fd) != identity:
                    raise ArtifactError(f"artifact file {name} changed after it was verified; stop whatever writes "
                                        "to the artifact and load it again")
            finally:
                if fd is not None:
                    os.close(fd)


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
    files = {p.relative_to(folder).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
             for p in sorted(folder.rglob("*")) if p.is_file() and p != folder / MANIFEST}
    data = {"schema_version": SCHEMA_VERSION, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "edgekit_version": __version__, "variant": variant, "source_model": portable_model(model),
            "runtime": {"name": runtime, "version": runtime_version}, "opset": opset,
            "quantization": quantization, "signature": signature, "evaluation": evaluation or {},
            "runtime_settings": runtime_settings or {}, "files": files, **(extra or {})}
    (folder / MANIFEST).write_text(json.dumps(data, indent=2))
    return Manifest(folder, data)


def update_manifest(folder: str | Path, **fields: Any) -> Manifest:
    """Set top-level fields (``evaluation``, ``runtime_settings``) of an intact artifact; files are re-checked
    first."""
    manifest = verify_artifact(folder)
    data = {**manifest.data, **fields}
    (Path(folder) / MANIFEST).write_text(json.dumps(data, indent=2))
    return Manifest(Path(folder), data)


def read_manifest(folder: str | Path) -> Manifest:
    """The manifest of ``folder``, its fields type-checked (one-line ArtifactError otherwise); files not checked."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ArtifactError(f"{folder} is not an artifact folder; pass the folder `edgekit export` wrote")
    path = folder / MANIFEST
    if path.is_symlink() or not path.is_file():
        raise ArtifactError(f"{folder} has no {MANIFEST} (a plain file); it is not an edgekit artifact (re-export it)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8"
        raise ArtifactError(f"{path} is not valid JSON ({reason}); the manifest was damaged, re-export the "
                            f"artifact") from None
    _check_fields(data, path)
    return Manifest(folder, data)


_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_fields(data: Any, path: Path) -> None:
    """Every field verification and loading read, of the type they read it as."""
    def bad(what: str) -> ArtifactError:
        return ArtifactError(f"{path}: {what}; the manifest is damaged or was not written by edgekit, re-export the "
                             "artifact")

    if not isinstance(data, dict):
        raise bad("not a JSON object")
    for key in ("schema_version", "variant", "runtime", "files"):
        if key not in data:
            raise ArtifactError(f"{path} lacks {key!r}; the manifest is incomplete, re-export the artifact")
    if not _is_int(data["schema_version"]) or data["schema_version"] < 1:
        raise bad("schema_version is not a positive integer")
    if not isinstance(data["variant"], str):
        raise bad("variant is not a string")
    runtime = data["runtime"]
    if not isinstance(runtime, dict) or not isinstance(runtime.get("name"), str):
        raise bad("runtime is not an object with a name")
    if data.get("opset") is not None and not _is_int(data["opset"]):
        raise bad("opset is not an integer")
    for key in ("runtime_settings", "quantization", "signature", "evaluation"):
        if data.get(key) is not None and not isinstance(data[key], dict):
            raise bad(f"{key} is not an object")
    files = data["files"]
    if not isinstance(files, dict) or not files:
        raise bad("files is not an object naming the artifact's files")
    for name, info in files.items():
        if not _plain_relative(name):
            raise bad(f"file name {name[:80]!r} is not a relative path inside the artifact")
        if (not isinstance(info, dict) or not isinstance(info.get("sha256"), str) or not _SHA256.match(info["sha256"])
                or not _is_int(info.get("bytes")) or info["bytes"] < 0):
            raise bad(f"the entry of {name[:80]!r} is not {{'sha256': 64 hex digits, 'bytes': an integer}}")


def _plain_relative(name: str) -> bool:
    """A path relative to the artifact folder, down only (no ``..``, ``.``, empty parts or backslashes)."""
    parts = name.split("/")
    return (bool(name) and "\\" not in name and "\0" not in name and name != MANIFEST
            and all(part not in ("", ".", "..") for part in parts))


def _open_inside(folder: Path, name: str) -> int:
    """Open ``folder/name`` for reading without following a symlink at any level (OSError otherwise)."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        *dirs, leaf = name.split("/")
        for part in dirs:
            inner = os.open(part, flags | getattr(os, "O_DIRECTORY", 0), dir_fd=fd)
            os.close(fd)
            fd = inner
        leaf_fd = os.open(leaf, flags, dir_fd=fd)
    finally:
        os.close(fd)
    if not stat.S_ISREG(os.fstat(leaf_fd).st_mode):
        os.close(leaf_fd)
        raise OSError(f"{name} is not a regular file")
    return leaf_fd


def _present_files(folder: Path) -> set[str]:
    """Every file under ``folder`` but its manifest, as manifest names; ArtifactError for a symlink or a
    special file at any depth (an artifact is plain files in plain folders)."""
    present = set()
    for root, dirs, files in os.walk(folder, followlinks=False):
        for entry in (*dirs, *files):
            full = Path(root) / entry
            name = full.relative_to(folder).as_posix()
            mode = full.lstat().st_mode
            if stat.S_ISLNK(mode) or not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                raise ArtifactError(f"artifact entry {name} is a symlink or special file; an artifact holds plain "
                                    "files only, copy it without links or re-export it")
            if stat.S_ISREG(mode) and name != MANIFEST:
                present.add(name)
    return present


def _hash_fd(fd: int, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    while block := os.read(fd, chunk):
        digest.update(block)
    return digest.hexdigest()


def verify_artifact(folder: str | Path, supported_opset: int | None = None,
                    expect_checksum: str | None = None) -> Manifest:
    """Check schema, runtime compatibility and every file's sha256; return the manifest or raise ArtifactError.

    Names must be plain relative paths; every file must be a regular file reached without a symlink
    and listed in the manifest (at any depth). Each file is hashed from one open descriptor whose
    identity (inode, size, times) before and after hashing is recorded in the returned manifest's
    ``seal``; :func:`load_artifact` checks it again once the runtime has loaded the files, so a file
    changed or replaced after it was hashed is refused, not loaded. ``expect_checksum`` pins the
    artifact: the manifest's :attr:`Manifest.checksum` must equal it.
    """
    manifest = read_manifest(folder)
    data, folder = manifest.data, Path(folder)
    check_compatible(manifest, supported_opset)
    if expect_checksum is not None and manifest.checksum != expect_checksum.strip().lower():
        raise ArtifactError(f"artifact checksum {manifest.checksum} is not the expected "
                            f"{expect_checksum.strip()[:64]}; "
                            "this is not the artifact you pinned")
    extra = sorted(_present_files(folder) - set(data["files"]))
    if extra:
        raise ArtifactError(f"artifact holds files its manifest does not list ({', '.join(extra[:3])}); "
                            "remove them or re-export")
    seal = {}
    for name, info in data["files"].items():
        try:
            fd = _open_inside(folder, name)
        except OSError:
            fd = None
        try:
            before = _identity(fd) if fd is not None else None
            intact = (fd is not None and before[2] == info["bytes"] and _hash_fd(fd) == info["sha256"]
                      and _identity(fd) == before)
        finally:
            if fd is not None:
                os.close(fd)
        if not intact:
            raise ArtifactError(f"artifact file {name} is missing or does not match its sha256 in the manifest; "
                                "copy or re-export the artifact")
        seal[name] = before
    return Manifest(folder, data, seal)


def check_compatible(manifest: Manifest, supported_opset: int | None) -> None:
    data = manifest.data
    if data["schema_version"] > SCHEMA_VERSION:
        raise ArtifactError(f"artifact schema {data['schema_version']} is newer than this edgekit supports "
                            f"({SCHEMA_VERSION}); upgrade edgekit")
    if supported_opset is not None and data.get("opset") and data["opset"] > supported_opset:
        raise ArtifactError(f"artifact needs ONNX opset {data['opset']} but this runtime supports up to "
                            f"{supported_opset}; upgrade onnxruntime or re-export with a lower opset")
