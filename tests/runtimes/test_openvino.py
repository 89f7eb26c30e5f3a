"""OpenVINO variants: NNCF-compressed IR scored against the PyTorch baseline, artifacts verified, device fallback."""
import shutil

import pytest
import torch

pytest.importorskip("openvino")
pytest.importorskip("nncf")

from edgekit.core.errors import ArtifactError, VariantError  # noqa: E402
from edgekit.runtimes import (
    build_runner,  # noqa: E402
    cached_artifact,  # noqa: E402
    load_artifact,  # noqa: E402
)
from edgekit.runtimes.openvino import DeviceFallbackWarning, OpenVINORunner, select_device  # noqa: E402
from edgekit.variants.registry import Variant  # noqa: E402


@pytest.mark.parametrize("name", ["ov-int8", "ov-int4-g32", "ov-int4-g128", "ov-int8-g128"])
def test_variant_scores_against_the_pytorch_baseline(name, quality_against_fp32):
    quality = quality_against_fp32(name)
    assert 0 < quality["kl_divergence"] < 0.1
    assert quality["top1_agreement"] > 0.85


def test_int4_is_smaller_than_int8(default_model):
    int8 = cached_artifact(Variant.parse("ov-int8"), default_model)
    int4 = cached_artifact(Variant.parse("ov-int4-g128"), default_model)
    assert (int4 / "openvino_model.bin").stat().st_size < 0.8 * (int8 / "openvino_model.bin").stat().st_size


def test_streamed_int8_graph_is_as_close_as_nncf_int8(quality_against_fp32):
    """ov-int8-g128 (read from the MatMulNBits graph written tensor by tensor, the int8 path that fits
    a 7B) loses no more than NNCF's per-channel int8 of the fp32 export, and far less than int4."""
    streamed, nncf_int8, int4 = (quality_against_fp32(n)["kl_divergence"]
                                 for n in ("ov-int8-g128", "ov-int8", "ov-int4-g128"))
    assert streamed < 2 * nncf_int8 and streamed < 0.25 * int4


def test_greedy_decode_follows_its_own_logits(default_model, tokenizer, eval_ids):
    runner = build_runner("ov-int4-g32", default_model, tokenizer)
    prompt = eval_ids[:16].reshape(1, -1)
    generated = list(runner.generate_stream(prompt, 8))
    full = torch.cat([prompt, torch.tensor([generated[:-1]])], dim=1)
    expected = runner.logits(full)[0, prompt.shape[1] - 1:].argmax(-1).tolist()
    assert generated == expected
    runner.close()


def test_tampered_artifact_is_refused(default_model, tmp_path):
    folder = tmp_path / "ov"
    shutil.copytree(cached_artifact(Variant.parse("ov-int4-g32"), default_model), folder)
    assert load_artifact(folder).weight_bytes() > 0
    weights = folder / "openvino_model.bin"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256"):
        load_artifact(folder)


def test_missing_device_falls_back_to_cpu_with_a_warning(default_model, tokenizer):
    with pytest.warns(DeviceFallbackWarning, match="NPU"):
        assert select_device("NPU", available=["CPU"]) == "CPU"
    import openvino as ov

    if any(d.startswith("NPU") for d in ov.Core().available_devices):
        pytest.skip("this machine has an NPU")
    folder = cached_artifact(Variant.parse("ov-int4-g32"), default_model)
    with pytest.warns(DeviceFallbackWarning):
        runner = OpenVINORunner("ov-int4-g32", folder, tokenizer, device="NPU")
    assert runner.device == "CPU"
    runner.close()


@pytest.mark.parametrize("name", ["ov-int4", "ov-int8-g48", "ov-int2-g32", "ov-int4-g32:bits=3"])
def test_bad_variants_are_refused(name, default_model):
    with pytest.raises(VariantError):
        build_runner(name, default_model)
