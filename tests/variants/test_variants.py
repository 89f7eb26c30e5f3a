"""edgekit.variants.registry: every PyTorch variant builds, runs and really shrinks the weights it must."""
import dataclasses

import pytest
import torch

from edgekit.core.errors import VariantError
from edgekit.models.layout import block_linears
from edgekit.quantizers.packed import PackedLinear, int4_kernel_for
from edgekit.runtimes import build_runner
from edgekit.variants.registry import Variant, known_variants

PYTORCH_VARIANTS = ["fp32", "bf16", "fp16", "int8", "nf4", "fp4", "int4-g32", "int4-g64", "int4-g128",
                    "int3-g64", "int3-g128", "int2-g32", "int2-g64"]
# least top-1 agreement with fp32 on real text: a loose floor that catches a broken scheme, not a small loss
MIN_AGREEMENT = {"bf16": 0.9, "fp16": 0.9, "int8": 0.9, "int2-g32": 0.5, "int2-g64": 0.5}


@pytest.fixture(scope="module")
def text_ids(eval_ids):
    return eval_ids[:130].reshape(2, 65)


@pytest.fixture(scope="module")
def reference(default_model, tokenizer, text_ids):
    runner = build_runner("fp32", default_model, tokenizer)
    block_params = sum(m.weight.numel() for m in block_linears(runner.model).values())
    out = {"logits": runner.logits(text_ids), "bytes": runner.weight_bytes(), "block_params": block_params}
    runner.close()
    return out


@pytest.fixture(scope="module")
def footprints():
    """weight_bytes() of each variant, filled in by the build test below."""
    return {}


@pytest.mark.parametrize("name", PYTORCH_VARIANTS)
def test_variant_builds_runs_and_generates(name, default_model, tokenizer, text_ids, reference, footprints):
    runner = build_runner(name, default_model, tokenizer)
    try:
        logits = runner.logits(text_ids)
        assert logits.shape == reference["logits"].shape and logits.dtype == torch.float32
        assert torch.isfinite(logits).all()
        agreement = float((logits.argmax(-1) == reference["logits"].argmax(-1)).float().mean())
        assert agreement >= MIN_AGREEMENT.get(name, 0.7), f"{name}: top-1 agreement {agreement:.2f} with fp32"
        tokens = list(runner.generate_stream(text_ids[:1, :16], 3))
        assert len(tokens) == 3 and all(0 <= t < logits.shape[-1] for t in tokens)
        assert tokens[0] == int(logits[0, 15].argmax())  # greedy, causal: the model's own next token
        if "-g" in name:
            packed = [m for m in runner.model.modules() if isinstance(m, PackedLinear)]
            assert len(packed) == 6 * 7 and all(m.bits == Variant.parse(name).bits for m in packed)
        footprints[name] = runner.weight_bytes()
    finally:
        runner.close()


def test_footprints_shrink_where_they_must(footprints, reference):
    missing = [v for v in PYTORCH_VARIANTS if v not in footprints]
    if missing:
        pytest.skip(f"needs the build test of {', '.join(missing)} in the same session")
    fp32, block = reference["bytes"], reference["block_params"]
    assert footprints["fp32"] == fp32
    assert footprints["bf16"] == footprints["fp16"] == fp32 // 2
    for name in PYTORCH_VARIANTS[6:]:  # packed codes really are b bits, plus fp16 scale + uint8 zero a group
        v = Variant.parse(name)
        per_group = 4 if int4_kernel_for("cpu", v.bits, v.group_size, 16) else 3  # the int4 kernel's bf16 scale + zero
        assert footprints[name] == fp32 - 4 * block + block * v.bits // 8 + per_group * block // v.group_size, name
    assert footprints["int4-g128"] < footprints["int4-g64"] < footprints["int4-g32"]
    assert footprints["int2-g64"] < footprints["int3-g64"] < footprints["int4-g64"] < footprints["int8"] < fp32
    assert footprints["nf4"] == footprints["fp4"] < footprints["int8"]
    assert fp32 - 4 * block + block // 2 < footprints["nf4"] < fp32 - 4 * block + block * 0.6  # 4 bits + absmax


def test_double_quant_saves_bytes(default_model, tokenizer):
    plain = build_runner("nf4", default_model, tokenizer)
    double = build_runner("nf4:double_quant=true", default_model, tokenizer)
    assert double.weight_bytes() < plain.weight_bytes()
    assert double.name == "nf4:double_quant=True"


def test_unknown_variant_lists_the_valid_ones():
    with pytest.raises(VariantError) as err:
        Variant.parse("int5-g32x")
    assert "unknown variant 'int5-g32x'" in str(err.value)
    for name in ("fp32", "int8", "nf4", "int4-g32", "int2-g64"):
        assert name in str(err.value) and name in known_variants()


def test_a_group_size_of_zero_fails_clearly(default_model, tokenizer):
    with pytest.raises(VariantError, match="group size 0 must be a positive number of input columns"):
        build_runner("int4-g0", default_model, tokenizer)


def test_option_parsing():
    v = Variant.parse(" nf4:double_quant=true,compute_dtype=bf16 ")
    assert (v.name, v.family) == ("nf4", "pytorch")
    assert v.options == (("compute_dtype", "bf16"), ("double_quant", True))  # sorted, typed
    assert v.option("double_quant") is True and v.option("missing", 7) == 7
    assert Variant.parse(str(v)) == v and Variant.parse(v) is v
    g = Variant.parse("int3-g64:device=cpu")
    assert (g.bits, g.group_size, g.option("device")) == (3, 64, "cpu")
    assert Variant.parse("int8:threshold=4.5").option("threshold") == 4.5
    with pytest.raises(dataclasses.FrozenInstanceError):
        g.name = "fp32"
    with pytest.raises(VariantError, match="key=value"):
        Variant.parse("nf4:double_quant")
    with pytest.raises(VariantError, match="key=value,key=value"):  # colons between options, not commas
        Variant.parse("mixed-int4-g128-k4:rank_tokens=256:samples=4")
    assert Variant.parse("fp32:device=cuda:1").option("device") == "cuda:1"  # a colon inside a value is fine
    assert str(Variant.parse("nf4:double_quant=true").with_options(profile="laptop-16gb", double_quant=False)) == \
        "nf4:double_quant=False,profile=laptop-16gb"
    with pytest.raises(VariantError, match="unknown option"):
        Variant.parse("gguf-q4_0").with_options(profile="laptop-16gb")


def test_bad_compute_dtype_is_refused(default_model, tokenizer):
    with pytest.raises(VariantError, match="compute_dtype='int7'"):
        build_runner("nf4:compute_dtype=int7", default_model, tokenizer)
