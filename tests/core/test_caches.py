"""Resources bounded and numbers that cannot mix: artifact loads pass the guard, work caches are cleaned
(all, or least recently used first), stale staging goes, self-test verdicts are atomic and expire,
baselines are keyed by model, an in-place edit changes the revision, the store's layout is versioned."""
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

import edgekit.memory.plan
from edgekit.artifacts.manifest import verify_artifact
from edgekit.cli import main
from edgekit.core.caches import cache_build, clean, entries
from edgekit.core.errors import InputError, PlanError
from edgekit.core.paths import staged
from edgekit.measure.store import MIGRATIONS, Result, ResultStore
from edgekit.memory.guard import admit_artifact
from edgekit.models.load import model_revision
from edgekit.runtimes import load_artifact, selftest
from edgekit.workflows.compare import _baseline_dir

TESTS = Path(__file__).resolve().parents[1]  # crashing_probes.py


def test_an_artifact_too_big_for_the_host_is_refused_before_loading(onnx_artifact, tmp_path, monkeypatch):
    folder = onnx_artifact("onnx-int4-g32")
    tiny = tmp_path / "tiny.json"
    tiny.write_text(json.dumps({"name": "tiny", "kind": "cpu", "host_gib": 0.001}))
    with pytest.raises(PlanError, match="refusing to load artifact onnx-int4-g32.*tiny has 0.00 GiB"):
        admit_artifact(verify_artifact(folder), str(tiny))
    monkeypatch.setattr(edgekit.memory.profiles.psutil, "virtual_memory", lambda: SimpleNamespace(available=1 << 20))
    with pytest.raises(PlanError, match="refusing to load artifact"):
        load_artifact(folder)


def _entry(root: Path, relative: str, size: int, age_s: float) -> Path:
    path = root / relative
    path.mkdir(parents=True)
    (path / "blob").write_bytes(b"x" * size)
    stamp = time.time() - age_s
    os.utime(path, (stamp, stamp))
    return path


def test_clean_evicts_least_recently_used_first_and_keeps_results(tmp_path, capsys, monkeypatch):
    old = _entry(tmp_path, "baselines/old", 3000, 300)
    mid = _entry(tmp_path, "artifacts/model-a/onnx-int8", 3000, 200)
    new = _entry(tmp_path, "gguf-exports/model-b", 3000, 100)
    (tmp_path / "results.sqlite").write_bytes(b"keep")
    assert [e.path for e in entries(tmp_path)] == [old, mid, new]
    removed = clean(6500, tmp_path)
    assert [e.path for e in removed] == [old] and mid.exists() and new.exists()
    monkeypatch.setenv("EDGEKIT_HOME", str(tmp_path))
    assert main(["clean"]) == 0
    assert "removed 2 cache entries" in capsys.readouterr().out
    assert not mid.exists() and not new.exists() and (tmp_path / "results.sqlite").exists()


def test_every_cache_build_applies_the_cap_and_spares_the_entry_it_built(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKIT_HOME", str(tmp_path))
    old = _entry(tmp_path, "baselines/old", 3000, 300)
    monkeypatch.setenv("EDGEKIT_CACHE_MAX_GB", str(4000 / 2**30))
    built = cache_build(tmp_path / "baselines" / "new", lambda out: (out / "sums.npz").write_bytes(b"x" * 3500))
    assert built.exists() and not old.exists()  # the older entry went to make room
    monkeypatch.setenv("EDGEKIT_CACHE_MAX_GB", str(1000 / 2**30))  # smaller than the new entry itself
    again = cache_build(tmp_path / "offload" / "big", lambda out: (out / "spill").write_bytes(b"x" * 2000))
    assert again.exists() and not built.exists()


def test_a_killed_builders_staging_folder_is_removed_on_the_next_build(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".cache-{int(dead.stdout)}-abcd1234"
    stale.mkdir()
    (stale / "half-written").write_bytes(b"x")
    alive = tmp_path / f".cache-{os.getpid()}-efgh5678"  # a build in progress in a live process stays
    alive.mkdir()
    staged(tmp_path / "cache", lambda out: (out / "done").write_text("ok"))
    assert not stale.exists() and alive.exists() and (tmp_path / "cache" / "done").is_file()


def test_self_test_verdicts_are_atomic_unreadable_ignored_failures_expire(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(TESTS))
    monkeypatch.setenv("EDGEKIT_SELFTEST_PROBES", "llama.cpp=crashing_probes:segfault")
    monkeypatch.setattr(selftest, "_verdicts", {})
    path = selftest._cache_path("llama.cpp", "crashing_probes:segfault")
    path.parent.mkdir(parents=True)
    path.write_text('{"runtime": "llama.cpp", "ok": tr')  # a verdict cut short by a kill
    verdict = selftest.check("llama.cpp")
    assert not verdict.ok and not verdict.cached and "segmentation fault" in verdict.reason
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left
    monkeypatch.setattr(selftest, "_verdicts", {})
    assert selftest.check("llama.cpp").cached  # a fresh failure is recalled
    expired = time.time() - selftest.FAILURE_TTL_S - 60
    os.utime(path, (expired, expired))
    monkeypatch.setattr(selftest, "_verdicts", {})
    assert not selftest.check("llama.cpp").cached  # an old failure is tested again


def test_two_models_with_unknown_revisions_never_share_a_baseline():
    settings = {"context": 256}
    assert _baseline_dir("org/model-a", "unknown", settings) != _baseline_dir("org/model-b", "unknown", settings)


def test_an_in_place_edit_of_one_tensor_changes_the_revision(default_model, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "m"
    shutil.copytree(default_model, folder)
    weights = load_file(folder / "model.safetensors")
    before = model_revision(str(folder))
    size = (folder / "model.safetensors").stat().st_size
    # the middle of one tensor, away from the file's start, middle and end the old fingerprint sampled
    name = min((n for n in weights if weights[n].numel() > 20000), key=lambda n: abs(weights[n].numel() - 100000))
    flat = weights[name].view(-1)
    flat[flat.numel() // 2 - 8: flat.numel() // 2 + 8] *= 2
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    assert (folder / "model.safetensors").stat().st_size == size
    assert model_revision(str(folder)) != before


def test_store_layout_is_versioned_and_a_newer_one_refused(tmp_path):
    path = tmp_path / "r.sqlite"
    with sqlite3.connect(path) as db:
        db.execute(MIGRATIONS[0])  # a store written before versions, without revisions
    ResultStore(path).add(Result("default", "fp32", model_revision="sha256:0"))
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    with pytest.raises(InputError, match="newer edgekit"):
        ResultStore(path)
