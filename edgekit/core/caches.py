"""The work caches under the work folder: what they hold, how big they are, and evicting them.

Exports,
artifacts, baselines (up to 2 GiB each), offload spills and the other caches under ``edgekit-results/``
(:func:`edgekit.core.paths.work_dir`) are rebuilt on demand, so any of them may go. :func:`clean` (``edgekit
clean``) removes them all, or with ``max_bytes`` the least recently used entries until the rest fits
(``EDGEKIT_CACHE_MAX_GB`` applies that cap after every cache entry is built: :func:`cache_build` is the one
way an entry is written). An entry's last use is its folder's modification time: a build sets it, and a cache
hit refreshes it (:func:`touch`). Results (``results.sqlite``) and reports are never touched. Scratch folders
a killed process left (``edgekit-*`` temporary folders) go too, once a day old.
"""
from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from edgekit.core.errors import InputError
from edgekit.core.paths import staged, work_dir

# cache folder -> how deep its entries sit (artifacts/<model key>/<variant>; the others one level down)
CACHES = {"artifacts": 2, "onnx-exports": 1, "gguf-exports": 1, "baselines": 1, "offload": 1, "sensitivity": 1,
          "smoothed": 1, "qat": 1, "pruned": 1}
SCRATCH_PREFIX = "edgekit-"
SCRATCH_AGE_S = 86400


@dataclass(frozen=True)
class Entry:
    path: Path
    bytes: int
    last_used: float


def _size(path: Path) -> int:
    if path.is_symlink() or path.is_file():
        return path.lstat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_symlink() or p.is_file())


def entries(root: Path | None = None) -> list[Entry]:
    """Every cache entry under the work folder, least recently used first."""
    root = root or work_dir()
    found = []
    for name, depth in CACHES.items():
        level = [root / name]
        for _ in range(depth):
            level = [child for folder in level if folder.is_dir() and not folder.is_symlink()
                     for child in folder.iterdir()]
        found += [Entry(p, _size(p), p.lstat().st_mtime) for p in level]
    return sorted(found, key=lambda e: e.last_used)


def touch(path: Path) -> None:
    """Mark a cache entry used now (its place in the eviction order)."""
    try:
        os.utime(path)
    except OSError:
        pass


def cache_build(folder: str | Path, build) -> Path:
    """Build the cache entry ``folder`` with ``build(staging)`` (:func:`edgekit.core.paths.staged`), then hold the
    work caches to ``EDGEKIT_CACHE_MAX_GB``, never evicting the entry just built."""
    folder = staged(folder, build)
    enforce_cap(keep=folder)
    return folder


def clean(max_bytes: int | None = None, root: Path | None = None, keep: Path | None = None) -> list[Entry]:
    """Remove every cache entry (``max_bytes`` None) or the least recently used ones until the rest holds
    at most ``max_bytes``; also old scratch folders. ``keep`` (an entry in use) is never removed. Returns what
    was removed."""
    root = root or work_dir()
    every = entries(root)
    total = sum(e.bytes for e in every)
    cached = [e for e in every if keep is None or e.path.resolve() != Path(keep).resolve()]
    removed = []
    for entry in cached:
        if max_bytes is not None and total <= max_bytes:
            break
        _remove(entry.path)
        total -= entry.bytes
        removed.append(entry)
    for scratch in root.glob(f"{SCRATCH_PREFIX}*"):
        if scratch.is_dir() and time.time() - scratch.lstat().st_mtime > SCRATCH_AGE_S:
            removed.append(Entry(scratch, _size(scratch), scratch.lstat().st_mtime))
            _remove(scratch)
    return removed


def enforce_cap(root: Path | None = None, keep: Path | None = None) -> None:
    """Apply ``EDGEKIT_CACHE_MAX_GB`` (unset: no cap), sparing ``keep``."""
    cap = os.environ.get("EDGEKIT_CACHE_MAX_GB")
    if cap:
        try:
            max_bytes = int(float(cap) * 2**30)
        except ValueError:
            raise InputError(f"EDGEKIT_CACHE_MAX_GB={cap[:20]!r} is not a number of GiB; set it like 20") from None
        clean(max_bytes, root, keep)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
