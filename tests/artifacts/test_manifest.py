"""Artifacts: verification refuses tampered, incomplete or too-new artifacts; the CLI round trip."""
import json
import shutil

import pytest

from edgekit.artifacts.manifest import MANIFEST, verify_artifact
from edgekit.cli import main
from edgekit.core.errors import ArtifactError, VariantError
from edgekit.runtimes import load_artifact
from edgekit.runtimes.onnxruntime.runner import max_supported_opset


@pytest.fixture
def artifact(onnx_artifact, tmp_path):
    """A private copy of the int4 artifact that a test may damage."""
    folder = tmp_path / "artifact"
    shutil.copytree(onnx_artifact("onnx-int4-g32"), folder)
    return folder


def _edit_manifest(folder, **fields):
    data = json.loads((folder / MANIFEST).read_text())
    data.update(fields)
    (folder / MANIFEST).write_text(json.dumps(data))


def _one_line_refusal(folder, match):
    with pytest.raises(ArtifactError, match=match) as info:
        load_artifact(folder)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_intact_artifact_verifies_and_runs(artifact):
    manifest = verify_artifact(artifact, supported_opset=max_supported_opset())
    assert manifest.runtime == "onnxruntime" and manifest.variant == "onnx-int4-g32"
    assert {"model.onnx", "tokenizer.json", "config.json"} <= set(manifest.data["files"])
    for key in ("schema_version", "edgekit_version", "opset", "quantization", "signature", "evaluation"):
        assert manifest.data[key] not in (None, {}, [])
    assert len(list(load_artifact(artifact).generate_stream(__import__("torch").tensor([[5, 6, 7]]), 3))) == 3


def test_tampered_file_is_refused(artifact):
    model = artifact / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    _one_line_refusal(artifact, "model.onnx is missing or does not match its sha256")


def test_missing_file_is_refused(artifact):
    (artifact / "tokenizer.json").unlink()
    _one_line_refusal(artifact, "tokenizer.json is missing or does not match its sha256")


def test_unlisted_file_is_refused(artifact):
    (artifact / "extra.bin").write_bytes(b"x")
    _one_line_refusal(artifact, "does not list")


def test_too_new_schema_is_refused(artifact):
    _edit_manifest(artifact, schema_version=99)
    _one_line_refusal(artifact, "schema 99 is newer.*upgrade edgekit")


def test_too_new_opset_is_refused(artifact):
    _edit_manifest(artifact, opset=max_supported_opset() + 1)
    _one_line_refusal(artifact, f"opset {max_supported_opset() + 1}.*upgrade onnxruntime")


def test_damaged_manifest_is_refused(artifact):
    (artifact / MANIFEST).write_text("{not json")
    _one_line_refusal(artifact, "not valid JSON")


def test_only_exportable_variants_export(default_model, tmp_path):
    from edgekit.runtimes import export_artifact

    with pytest.raises(VariantError, match="no artifact to export"):
        export_artifact("fp32", default_model, tmp_path / "x")


def test_cli_export_verify_run(default_model, tmp_path, capsys, onnx_artifact):
    onnx_artifact("onnx-fp32")  # the plain export is cached, so this export only compiles and checks parity
    out = tmp_path / "cli-artifact"
    assert main(["export", "--model", default_model, "--variant", "onnx-fp32:opt_level=extended", "--out",
                 str(out)]) == 0
    assert "wrote onnx-fp32:opt_level=extended artifact" in capsys.readouterr().out
    assert main(["verify", str(out)]) == 0
    assert capsys.readouterr().out.startswith("ok: onnx-fp32:opt_level=extended for onnxruntime")
    assert main(["run", str(out), "--prompt", "HAMLET:", "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out.startswith("HAMLET:")
    # exporting over a non-empty folder, an unknown variant, a tampered artifact: one line, exit 2
    assert main(["export", "--model", default_model, "--variant", "onnx-fp32", "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["export", "--model", default_model, "--variant", "onnx-int5", "--out", str(tmp_path / "y")]) == 2
    assert "unknown variant" in capsys.readouterr().err
    (out / "config.json").write_text("{}")
    assert main(["verify", str(out)]) == 2
    err = capsys.readouterr().err
    assert "config.json is missing or does not match" in err and err.count("\n") == 1
    assert main(["run", str(out), "--prompt", "HAMLET:"]) == 2
    assert main(["verify", str(tmp_path / "nowhere")]) == 2
