"""The canary comparison of two artifacts: quality and latency checks and the verdict."""
import json
import shutil

import pytest

from edgekit.artifacts.manifest import MANIFEST, write_manifest
from edgekit.core.errors import ArtifactError
from edgekit.measure.quality import EvalSettings
from edgekit.workflows.canary import CanaryThresholds, canary, manifest_frame

SETTINGS = EvalSettings(context=128, stride=64, max_tokens=768)
# tests judge correctness, not speed (on a shared machine the timing is contended: trusted all the same)
NO_LATENCY_LIMIT = dict(max_slowdown_pct=1e9, max_p99_increase_pct=1e9, trust_contended=True)


def _canary(candidate, current, eval_ids, **limits):
    return canary(candidate, current, eval_ids, CanaryThresholds(**{**NO_LATENCY_LIMIT, **limits}), SETTINGS,
                  prompt_tokens=16, new_tokens=8, runs=2, progress=False)


def test_identical_artifact_is_promoted(onnx_artifact, eval_ids, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(onnx_artifact("onnx-fp32"), copy)
    report = _canary(copy, onnx_artifact("onnx-fp32"), eval_ids)
    assert report.promote and report.verdict == "promote"
    assert report.metrics["kl_divergence"] < 1e-9 and report.metrics["top1_agreement"] == 1.0
    assert list(report.frame()["check"]) == ["perplexity delta", "KL divergence", "top-1 agreement",
                                             "decode slowdown", "median latency increase"]  # 14 steps: no P99


def test_quantized_candidate_held_back_by_strict_quality_limits(onnx_artifact, eval_ids):
    report = _canary(onnx_artifact("onnx-int4-g128"), onnx_artifact("onnx-fp32"), eval_ids,
                     max_kl_divergence=1e-6, min_top1_agreement=0.999)
    assert not report.promote
    failed = {c["check"] for c in report.checks if not c["passed"]}
    assert {"KL divergence", "top-1 agreement"} <= failed
    assert report.verdict.startswith("hold back: ")
    assert report.metrics["weight_bytes_candidate"] < report.metrics["weight_bytes_current"]


def test_latency_limits_are_applied(onnx_artifact, eval_ids):
    report = _canary(onnx_artifact("onnx-int8"), onnx_artifact("onnx-fp32"), eval_ids,
                     max_slowdown_pct=-1e6, max_kl_divergence=10, min_top1_agreement=0, max_delta_ppl_pct=1e6)
    assert [c["check"] for c in report.checks if not c["passed"]] == ["decode slowdown"]
    relaxed = report.judged(CanaryThresholds(max_slowdown_pct=1e9, max_p99_increase_pct=1e9, max_kl_divergence=10,
                                             min_top1_agreement=0, max_delta_ppl_pct=1e6, trust_contended=True))
    assert relaxed.promote and relaxed.metrics is report.metrics  # judged again, not measured again


def test_artifacts_with_different_tokenizers_are_refused(onnx_artifact, eval_ids, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(onnx_artifact("onnx-fp32"), other)
    tokenizer = json.loads((other / "tokenizer.json").read_text())
    tokenizer["added_tokens"] = tokenizer.get("added_tokens", []) + []
    (other / "tokenizer.json").write_text(json.dumps(tokenizer, indent=1))
    data = json.loads((other / MANIFEST).read_text())
    (other / MANIFEST).unlink()
    write_manifest(other, variant=data["variant"], runtime="onnxruntime", runtime_version=data["runtime"]["version"],
                   model=data["source_model"], quantization=data["quantization"], signature=data["signature"],
                   opset=data["opset"])
    with pytest.raises(ArtifactError, match="different tokenizers"):
        _canary(other, onnx_artifact("onnx-fp32"), eval_ids)


def test_manifest_frame_lists_files_and_settings(onnx_artifact):
    frame = manifest_frame(onnx_artifact("onnx-int4-g32"))
    fields = set(frame["field"])
    assert {"variant", "schema_version", "quantization.block_size", "files.model.onnx",
            "evaluation.top1_agreement"} <= fields


def test_manifest_frame_reads_sizes_and_floats_for_reading(onnx_artifact):
    values = manifest_frame(onnx_artifact("onnx-int4-g32")).set_index("field")["value"]
    assert values["files.model.onnx"].split(",")[0].endswith(" MB")
    assert "bytes" not in values["files.model.onnx"]
    assert len(values["evaluation.max_abs_logit_diff"].replace(".", "").lstrip("0-")) <= 3
