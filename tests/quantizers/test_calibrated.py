"""GPTQ / AWQ / mixed precision: real packed weights, and better than round-to-nearest on KL."""
import pytest
import torch

from edgekit.measure.quality import EvalSettings, score
from edgekit.quantizers.calibrated import awq_scale, gptq_quantize, rtn_dequantized
from edgekit.quantizers.mixed import mixed_layer_schemes
from edgekit.quantizers.packed import PackedLinear, rtn_quantize
from edgekit.runtimes import build_runner
from edgekit.variants.registry import Variant

SETTINGS = EvalSettings(context=256, stride=128, max_tokens=1024, batch_size=8)


@pytest.fixture(scope="module")
def fp32_scores(default_model, tokenizer, eval_ids):
    runner = build_runner("fp32", default_model, tokenizer)
    return score(runner, eval_ids, SETTINGS, keep_logprobs=True, progress=False)


def kl_of(variant, default_model, tokenizer, eval_ids, base):
    runner = build_runner(variant, default_model, tokenizer)
    found = score(runner, eval_ids, SETTINGS, baseline=base, progress=False).against(base)
    return found["kl_divergence"], runner


def test_gptq_without_correlation_is_round_to_nearest():
    torch.manual_seed(0)
    weight = torch.randn(64, 256)
    codes, scale, zero = gptq_quantize(weight, torch.eye(256), 4, 128)
    rtn_codes, rtn_scale, rtn_zero = rtn_quantize(weight, 4, 128)
    assert torch.equal(zero, rtn_zero)
    assert torch.allclose(scale, rtn_scale.half().float())
    assert (codes == rtn_codes).float().mean() > 0.999  # only fp16-rounded scales may flip a tie


def test_gptq_lowers_the_layer_output_error():
    torch.manual_seed(0)
    x = torch.randn(2048, 128) @ torch.randn(128, 128)  # correlated inputs, as in a real layer
    weight = torch.randn(32, 128)
    codes, scale, zero = gptq_quantize(weight, 2 * x.T @ x / len(x), 3, 64)
    gptq = PackedLinear.from_codes(codes, scale, zero, 3, 64).dequantized_weight()
    error = lambda w: float(((x @ (w - weight).T) ** 2).mean())
    assert error(gptq) < 0.8 * error(rtn_dequantized(weight, 3, 64))


def test_awq_scale_never_worse_than_plain_rtn():
    torch.manual_seed(0)
    x = torch.randn(1024, 128) * torch.logspace(-1, 1, 128)  # a few salient channels
    w = torch.randn(48, 128)
    s = awq_scale(x, [w], 4, 64)
    loss = lambda w_hat: float(((x @ w_hat.T - x @ w.T) ** 2).mean())
    assert loss(rtn_dequantized(w * s, 4, 64) / s) <= loss(rtn_dequantized(w, 4, 64))


@pytest.mark.parametrize("method", ["gptq"])
def test_calibrated_beats_rtn_on_kl(method, default_model, tokenizer, eval_ids, fp32_scores):
    rtn, rtn_runner = kl_of("int4-g128", default_model, tokenizer, eval_ids, fp32_scores)
    calibrated, runner = kl_of(f"{method}-int4-g128", default_model, tokenizer, eval_ids, fp32_scores)
    assert calibrated < rtn
    layers = [m for m in runner.model.modules() if isinstance(m, PackedLinear)]
    assert len(layers) == 42 and all(m.bits == 4 and m.group_size == 128 for m in layers)
    assert runner.weight_bytes() == rtn_runner.weight_bytes()  # the same packed format


def test_mixed_variant_keeps_the_most_sensitive_layers(default_model, tokenizer):
    from edgekit.quantizers.sensitivity import ranking

    variant = "mixed-int2-g64-k3:rank_tokens=512"
    runner = build_runner(variant, default_model, tokenizer)
    kept = ranking(default_model, "int2-g64", tokens=512)[:3]
    bits = {n: m.bits for n, m in runner.model.named_modules() if isinstance(m, PackedLinear)}
    assert sorted(n for n, b in bits.items() if b == 8) == sorted(kept)
    assert sum(b == 2 for b in bits.values()) == 42 - 3
    schemes = mixed_layer_schemes(Variant.parse(variant), default_model)
    assert sorted(n for n, s in schemes.items() if s == "int8-g64") == sorted(kept)


@pytest.mark.parametrize("variant", ["mixed-int2-g64-k4:rank_tokens=512",
                                     "mixed-int2-g64-k3:rank_tokens=512,high=fp16"])
def test_mixed_bytes_match_the_planner(variant, default_model, tokenizer):
    plan = pytest.importorskip("edgekit.memory.bytes")
    from edgekit.models.load import model_config

    runner = build_runner(variant, default_model, tokenizer)
    planned = plan.weight_bytes(model_config(default_model), Variant.parse(variant).name,
                                layer_schemes=mixed_layer_schemes(variant, default_model))
    assert abs(planned - runner.weight_bytes()) <= 0.02 * runner.weight_bytes()
