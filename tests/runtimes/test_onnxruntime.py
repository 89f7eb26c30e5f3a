"""ONNX export, quantization, compile and the ONNX Runtime Runner on the default model."""
import math

import pytest
import torch

from edgekit.core.errors import InputError
from edgekit.measure.quality import EvalSettings, score
from edgekit.runtimes import build_runner, cached_manifest
from edgekit.runtimes.onnx.export import parity
from edgekit.runtimes.onnxruntime.runner import ORTRunner, compile_model, max_supported_opset, model_opset
from edgekit.variants.registry import Variant

SETTINGS = EvalSettings(context=128, stride=64, max_tokens=1024, batch_size=8)
QUANTIZED = ("onnx-int8", "onnx-int8-static", "onnx-int4-g32", "onnx-int4-g64", "onnx-int4-g128", "onnx-int8-g128")


@pytest.fixture(scope="module")
def torch_fp32(default_model):
    runner = build_runner("fp32", default_model)
    yield runner
    runner.close()


@pytest.fixture(scope="module")
def fp32_scores(torch_fp32, eval_ids):
    return score(torch_fp32, eval_ids, SETTINGS, keep_logprobs=True, progress=False)


@pytest.fixture(scope="module")
def onnx_fp32(onnx_artifact):
    runner = ORTRunner(onnx_artifact("onnx-fp32"))
    yield runner
    runner.close()


def test_export_matches_pytorch_logits(torch_fp32, onnx_fp32, onnx_artifact, eval_ids):
    report = parity(torch_fp32, onnx_fp32, eval_ids[:512])
    assert report["max_abs_logit_diff"] < 1e-3
    assert report["top1_agreement"] == 1.0
    from edgekit.artifacts.manifest import verify_artifact

    recorded = verify_artifact(onnx_artifact("onnx-fp32")).data["evaluation"]
    assert recorded["max_abs_logit_diff"] < 1e-3 and recorded["parity_tokens"] == 512


def test_greedy_decoding_matches_pytorch(torch_fp32, onnx_fp32, eval_ids):
    prompt = eval_ids[:24].reshape(1, -1)
    expected = list(torch_fp32.generate_stream(prompt, 16))
    assert list(onnx_fp32.generate_stream(prompt, 16)) == expected
    unbound = ORTRunner(onnx_fp32.folder, io_binding=False)
    assert list(unbound.generate_stream(prompt, 16)) == expected


def test_generate_batch_left_padded_matches_single_prompts(onnx_fp32, eval_ids):
    prompts = [eval_ids[:20], eval_ids[100:107], eval_ids[300:312]]
    batch = onnx_fp32.generate_batch(prompts, 8)
    assert batch == [list(onnx_fp32.generate_stream(p[None, :], 8)) for p in prompts]
    with pytest.raises(InputError, match="empty prompt"):
        onnx_fp32.generate_batch([eval_ids[:5], eval_ids[:0]], 4)


@pytest.mark.parametrize("variant", ("onnx-fp32",) + QUANTIZED)
def test_variant_runs_and_scores_against_fp32(variant, default_model, eval_ids, fp32_scores, onnx_fp32):
    runner = build_runner(variant, default_model)
    try:
        scores = score(runner, eval_ids, SETTINGS, baseline=fp32_scores, progress=False)
        vs = scores.against(fp32_scores)
        assert math.isfinite(scores.perplexity()["perplexity"])
        if variant == "onnx-fp32":
            assert vs["kl_divergence"] < 1e-6 and vs["top1_agreement"] == 1.0
        else:  # quantized: close to fp32 but not identical, and smaller
            assert 0 < vs["kl_divergence"] < 0.5
            assert vs["top1_agreement"] > 0.75
            assert runner.weight_bytes() < 0.5 * onnx_fp32.weight_bytes()
        assert len(list(runner.generate_stream(eval_ids[:8][None, :], 4))) == 4
    finally:
        runner.close()


def test_smaller_blocks_store_more_scales(default_model):
    sizes = {}
    for variant in ("onnx-int4-g32", "onnx-int4-g128"):
        runner = build_runner(variant, default_model)
        sizes[variant] = runner.weight_bytes()
        runner.close()
    assert sizes["onnx-int4-g32"] > sizes["onnx-int4-g128"]


def test_8_bit_blocks_are_closer_to_fp32_than_4_bit(default_model, eval_ids, fp32_scores):
    """Same blocks, same graph, twice the bits: the streamed int8 graph (the int8 path that fits a 7B)
    must lose clearly less than the int4 one."""
    kl = {}
    for variant in ("onnx-int4-g128", "onnx-int8-g128"):
        runner = build_runner(variant, default_model)
        kl[variant] = score(runner, eval_ids, SETTINGS, baseline=fp32_scores,
                            progress=False).against(fp32_scores)["kl_divergence"]
        runner.close()
    assert kl["onnx-int8-g128"] < 0.25 * kl["onnx-int4-g128"]


def test_accuracy_level_and_symmetry_are_recorded(onnx_artifact):
    from edgekit.artifacts.manifest import verify_artifact

    quant = verify_artifact(onnx_artifact("onnx-int4-g128:accuracy_level=0,symmetric=true")).data["quantization"]
    assert quant == {"scheme": "4-bit weight-only MatMulNBits", "weight_dtype": "int4", "bits": 4, "block_size": 128,
                     "symmetric": True, "accuracy_level": 0}


@pytest.mark.parametrize("name, match", [("onnx-int4-g32:bogus=1", "unknown option.*bogus.*it takes symmetric"),
                                         ("onnx-int4-g48", "block size 48"),
                                         ("onnx-int8-g48", "block size 48"),
                                         ("onnx-int4-g32:accuracy_level=7", "accuracy_level=7"),
                                         ("onnx-fp32:opt_level=max", "graph_optimization_level")])
def test_bad_variant_options_are_refused(name, match, default_model, tmp_path):
    from edgekit.core.errors import EdgekitError
    from edgekit.runtimes import export_artifact

    with pytest.raises(EdgekitError, match=match):
        export_artifact(Variant.parse(name), default_model, tmp_path / "out")


def test_missing_execution_provider_falls_back_to_cpu(onnx_artifact, eval_ids):
    with pytest.warns(RuntimeWarning, match="NoSuchExecutionProvider is not available.*falling back"):
        runner = ORTRunner(onnx_artifact("onnx-fp32"), providers=["NoSuchExecutionProvider"])
    assert runner.providers == ["CPUExecutionProvider"]
    assert runner.session.get_providers() == ["CPUExecutionProvider"]
    assert runner.logits(eval_ids[:16][None, :]).shape == (1, 16, 4096)


def test_compile_levels_and_opset(onnx_artifact, tmp_path, eval_ids, onnx_fp32):
    source = onnx_artifact("onnx-fp32") / "model.onnx"
    target = compile_model(source, tmp_path / "model.onnx", graph_optimization_level="basic")
    assert target.is_file() and model_opset(target) <= max_supported_opset()
    with pytest.raises(InputError, match="graph_optimization_level"):
        compile_model(source, tmp_path / "other.onnx", graph_optimization_level="max")
    basic = ORTRunner(onnx_fp32.folder, graph_optimization_level="disable", intra_op_threads=1)
    assert torch.allclose(basic.logits(eval_ids[:32][None, :]), onnx_fp32.logits(eval_ids[:32][None, :]), atol=1e-4)


@pytest.mark.parametrize("variant", ["onnx-fp32", "onnx-int4-g32"])
def test_signature_read_from_the_graph_is_what_onnx_runtime_reports(variant, onnx_artifact):
    """The manifest's signature is read from the graph without a session (a 7B's weights stay unread):
    it must be exactly what an ONNX Runtime session of the compiled model reports."""
    import onnxruntime as ort

    from edgekit.artifacts.manifest import verify_artifact
    from edgekit.runtimes.onnxruntime import model_signature

    folder = onnx_artifact(variant)
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    describe = lambda args: [{"name": a.name, "type": a.type, "shape": a.shape} for a in args]  # noqa: E731
    live = {"inputs": describe(session.get_inputs()), "outputs": describe(session.get_outputs())}
    assert model_signature(folder / "model.onnx") == live
    assert verify_artifact(folder).data["signature"] == live


def test_runtime_settings_from_manifest_apply_unless_overridden(onnx_artifact, tmp_path):
    import shutil

    from edgekit.artifacts.manifest import update_manifest
    from edgekit.runtimes import load_artifact

    folder = tmp_path / "tuned"
    shutil.copytree(onnx_artifact("onnx-int8"), folder)
    update_manifest(folder, runtime_settings={"intra_op_threads": 1, "io_binding": False})
    runner = load_artifact(folder)
    assert runner.settings["intra_op_threads"] == 1 and runner.settings["io_binding"] is False
    assert load_artifact(folder, io_binding=True).settings["io_binding"] is True
    with pytest.raises(InputError, match="unknown ONNX Runtime option"):
        load_artifact(folder, threads=2)


@pytest.mark.parametrize("bits, symmetric", [(4, False), (4, True), (8, False)])
def test_streamed_nbits_graph_equals_the_quantized_optimum_export(bits, symmetric, default_model, eval_ids, tmp_path):
    """The graph written weight by weight (build.py) computes what ORT's own MatMulNBitsQuantizer makes
    of optimum's fp32 export: same codes and scales, same logits at fp32 compute (accuracy_level=1)."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    from edgekit.artifacts.manifest import copy_side_files
    from edgekit.runtimes.onnx.build import build_nbits_decoder
    from edgekit.runtimes.onnx.export import cached_export

    built, reference = tmp_path / "built", tmp_path / "reference"
    build_nbits_decoder(default_model, built, bits, 32, symmetric, 1)
    config = DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=symmetric, accuracy_level=1, bits=bits,
                                          op_types_to_quantize=("MatMul",))
    quantizer = MatMulNBitsQuantizer(onnx.load(str(cached_export(default_model))), algo_config=config)
    quantizer.process()
    reference.mkdir()
    quantizer.model.save_model_to_file(str(reference / "model.onnx"))
    for folder in (built, reference):
        copy_side_files(default_model, folder)
    ids = eval_ids[:256].reshape(2, 128)
    a, b = ORTRunner(built).logits(ids), ORTRunner(reference).logits(ids)
    assert (a - b).abs().max() < 1e-3
    generated = list(ORTRunner(built).generate_stream(ids[:1, :16], 6))
    assert generated == list(ORTRunner(reference).generate_stream(ids[:1, :16], 6))


def test_a_cached_artifact_is_hashed_once_per_load(default_model, monkeypatch):
    import edgekit.artifacts.manifest as manifest_module

    files = len(cached_manifest("onnx-int4-g32", default_model).data["files"])  # cached from here on
    hashed, real = [], manifest_module._hash_fd
    monkeypatch.setattr(manifest_module, "_hash_fd", lambda fd, *a, **k: hashed.append(fd) or real(fd, *a, **k))
    build_runner("onnx-int4-g32", default_model).close()
    assert len(hashed) == files  # one pass over the files: the cache's check is the load's


def test_static_calibration_windows_follow_the_bos_rule(default_model, gemma_checkpoint):
    """Static int8's calibration reader follows the BOS rule (edgekit.core.paths.begin_with_bos): for a tokenizer
    that adds BOS, each window is BOS then its first length - 1 tokens; for one that adds none (or no tokenizer),
    the text as it comes."""
    import numpy as np

    from edgekit.models.load import load_tokenizer
    from edgekit.runtimes.onnx.export import cached_export
    from edgekit.runtimes.onnxruntime.quantize import CalibrationWindows

    ids, gemma = np.arange(10, 42), load_tokenizer(gemma_checkpoint)
    plain = CalibrationWindows(cached_export(default_model), ids, windows=2, length=16)
    default = CalibrationWindows(cached_export(default_model), ids, windows=2, length=16,
                                 tokenizer=load_tokenizer(default_model))
    first = CalibrationWindows(cached_export(default_model), ids, windows=2, length=16, tokenizer=gemma)
    assert [f["input_ids"][0, 0] for f in plain.feeds] == [10, 26]
    for p, d, b in zip(plain.feeds, default.feeds, first.feeds):
        assert (d["input_ids"] == p["input_ids"]).all()
        assert b["input_ids"][0, 0] == gemma.bos_token_id and (b["input_ids"][0, 1:] == p["input_ids"][0, :-1]).all()
