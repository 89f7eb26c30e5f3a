"""Artifacts confined and verified once: names inside the folder, no symlinks, no unlisted files at any
depth, type-checked manifests, one refusal line (exit 2), a pinned checksum, and nothing changed
between hashing and loading; shard names of a checkpoint index confined to the model folder."""
import json
import os
import shutil

import pytest
import torch

import edgekit.artifacts.manifest as artifact_module
from edgekit.artifacts.manifest import LOADERS, MANIFEST, sha256_file, verify_artifact
from edgekit.cli import main
from edgekit.core.errors import ArtifactError, ModelSourceError
from edgekit.models.checkpoint import checkpoint_shards
from edgekit.runtimes import load_artifact


@pytest.fixture
def artifact(onnx_artifact, tmp_path):
    folder = tmp_path / "artifact"
    shutil.copytree(onnx_artifact("onnx-int4-g32"), folder)
    return folder


def _manifest(folder):
    return json.loads((folder / MANIFEST).read_text())


def _write(folder, data):
    (folder / MANIFEST).write_text(json.dumps(data))


def _list(folder, name, path):
    """Add ``name`` to the manifest with the sha256 and size of ``path`` (so only confinement can refuse it)."""
    data = _manifest(folder)
    data["files"][name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    _write(folder, data)


def _refused_by_verify(folder, capsys, match):
    assert main(["verify", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert match in err, err
    return err


def test_parent_and_absolute_names_are_refused(artifact, tmp_path, capsys):
    outside = tmp_path / "outside.txt"
    outside.write_text("secret")
    _list(artifact, "../outside.txt", outside)
    _refused_by_verify(artifact, capsys, "is not a relative path inside the artifact")
    data = _manifest(artifact)
    del data["files"]["../outside.txt"]
    _write(artifact, data)
    _list(artifact, str(outside), outside)
    _refused_by_verify(artifact, capsys, "is not a relative path inside the artifact")


def test_symlinked_file_and_directory_are_refused(artifact, tmp_path, capsys):
    outside = tmp_path / "outside.txt"
    outside.write_text("secret")
    (artifact / "link.txt").symlink_to(outside)
    _list(artifact, "link.txt", outside)
    _refused_by_verify(artifact, capsys, "link.txt is a symlink")
    (artifact / "link.txt").unlink()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "data.bin").write_bytes(b"x")
    (artifact / "sub").symlink_to(elsewhere, target_is_directory=True)
    _list(artifact, "sub/data.bin", elsewhere / "data.bin")
    _refused_by_verify(artifact, capsys, "sub is a symlink")


def test_unlisted_files_at_any_depth_are_refused(artifact, capsys):
    (artifact / "deep" / "er").mkdir(parents=True)
    (artifact / "deep" / "er" / MANIFEST).write_text("{}")
    _refused_by_verify(artifact, capsys, "deep/er/manifest.json")


@pytest.mark.parametrize("edit", [
    {"schema_version": "2"}, {"schema_version": True}, {"files": ["model.onnx"]}, {"files": {}},
    {"runtime": "onnxruntime"}, {"variant": 3}, {"opset": "17"}, {"runtime_settings": []},
])
def test_type_confused_manifests_are_refused_in_one_line(artifact, capsys, edit):
    _write(artifact, {**_manifest(artifact), **edit})
    _refused_by_verify(artifact, capsys, "re-export")


def test_entry_without_bytes_or_with_a_bad_hash_is_refused(artifact, capsys):
    data = _manifest(artifact)
    del data["files"]["config.json"]["bytes"]
    _write(artifact, data)
    _refused_by_verify(artifact, capsys, "'config.json'")
    data["files"]["config.json"] = {"sha256": "../x", "bytes": 1}
    _write(artifact, data)
    _refused_by_verify(artifact, capsys, "'config.json'")
    _write(artifact, [1, 2])
    _refused_by_verify(artifact, capsys, "not a JSON object")


def test_missing_and_mismatched_get_one_message(artifact, capsys):
    (artifact / "config.json").write_text("{}")
    changed = _refused_by_verify(artifact, capsys, "config.json")
    (artifact / "config.json").unlink()
    missing = _refused_by_verify(artifact, capsys, "config.json")
    assert changed == missing


def test_checksum_pins_the_artifact(artifact, capsys):
    checksum = verify_artifact(artifact).checksum
    assert main(["verify", str(artifact), "--expect-checksum", checksum]) == 0
    assert checksum in capsys.readouterr().out
    assert main(["verify", str(artifact), "--expect-checksum", "0" * 64]) == 2
    assert "not the expected" in capsys.readouterr().err
    with pytest.raises(ArtifactError, match="not the expected"):
        load_artifact(artifact, expect_checksum="f" * 64)
    runner = load_artifact(artifact, expect_checksum=checksum)
    assert len(list(runner.generate_stream(torch.tensor([[5, 6, 7]]), 2))) == 2


def test_a_file_changed_after_verification_is_not_loaded(artifact, monkeypatch):
    """The real ONNX Runtime loader, with the tokenizer file rewritten between hashing and loading."""
    loader, max_opset = LOADERS["onnxruntime"]

    def load_after_a_change(manifest, **options):
        (artifact / "config.json").write_text((artifact / "config.json").read_text() + " ")
        return loader(manifest, **options)

    monkeypatch.setitem(LOADERS, "onnxruntime", (load_after_a_change, max_opset))
    with pytest.raises(ArtifactError, match="config.json changed after it was verified"):
        load_artifact(artifact)


def test_a_file_replaced_after_verification_is_refused(artifact):
    manifest = verify_artifact(artifact)
    copy = artifact / "config.json.new"
    shutil.copy2(artifact / "config.json", copy)
    os.replace(copy, artifact / "config.json")  # same bytes, another file: not the one hashed
    with pytest.raises(ArtifactError, match="changed after it was verified"):
        load_artifact(manifest)


def test_a_verified_manifest_loads_without_hashing_again(artifact, monkeypatch):
    manifest = verify_artifact(artifact)
    hashed = []
    real = artifact_module._hash_fd
    monkeypatch.setattr(artifact_module, "_hash_fd", lambda fd: hashed.append(fd) or real(fd))
    runner = load_artifact(manifest)
    assert hashed == [] and len(list(runner.generate_stream(torch.tensor([[5, 6]]), 2))) == 2


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/etc/passwd", "sub/../../x.safetensors", 7])
def test_index_shard_names_stay_inside_the_model_folder(tmp_path, shard):
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": shard}}))
    with pytest.raises(ModelSourceError, match="inside the model folder"):
        checkpoint_shards(tmp_path)
