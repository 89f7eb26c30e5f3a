"""edgekit.quantizers.reference: the teaching quantizer against hand-computed cases and bitsandbytes."""
import math

import pytest
import torch
from torch import nn

from edgekit.core.errors import VariantError
from edgekit.quantizers.reference import (
    NF4_LEVELS,
    TEACHING_SCHEMES,
    Scheme,
    error_histogram,
    fake_quantize,
    layer_errors,
    outlier_report,
    quantization_error,
    quantize_int,
    quantize_nf4,
    scheme_table,
)


@pytest.fixture
def weight():
    return torch.randn(64, 128, generator=torch.Generator().manual_seed(0)) * 0.02


def test_symmetric_int8_per_tensor_by_hand():
    w = torch.tensor([[0.5, -1.27], [0.01, 1.0]])
    codes, scale, zero = quantize_int(w, Scheme(8, "tensor"))
    assert float(scale) == pytest.approx(1.27 / 127)
    assert codes.reshape(2, 2).tolist() == [[50, -127], [1, 100]] and float(zero) == 0
    assert torch.allclose(fake_quantize(w, Scheme(8, "tensor")), w, atol=0.01 / 2 + 1e-7)


def test_asymmetric_int4_uses_all_levels_of_a_lopsided_range():
    w = torch.tensor([[0.0, 0.1, 0.2, 1.5]])
    codes, scale, zero = quantize_int(w, Scheme(4, "channel", symmetric=False))
    assert float(scale) == pytest.approx(0.1) and float(zero) == 0
    assert codes.reshape(-1).tolist() == [0, 1, 2, 15]
    symmetric = fake_quantize(w, Scheme(4, "channel"))  # scale 1.5/7 wastes the negative half
    assert (fake_quantize(w, Scheme(4, "channel", symmetric=False)) - w).abs().max() < (symmetric - w).abs().max()


@pytest.mark.parametrize("scheme", TEACHING_SCHEMES, ids=lambda s: s.label)
def test_error_is_at_most_half_a_step(weight, scheme):
    deq = fake_quantize(weight, scheme)
    assert deq.shape == weight.shape
    if scheme.codebook == "nf4":
        gaps = (NF4_LEVELS[1:] - NF4_LEVELS[:-1]).max() / 2
        absmax = weight.reshape(-1, scheme.group_size).abs().amax(-1, keepdim=True)
        assert bool(((deq - weight).reshape(-1, scheme.group_size).abs() <= gaps * absmax + 1e-7).all())
    else:
        codes, scale, zero = quantize_int(weight, scheme)
        err = (deq - weight).reshape(codes.shape).abs()
        assert bool((err <= scale / 2 + 1e-7).all())


def test_finer_scopes_and_more_bits_lose_less():
    weight = torch.randn(64, 256, generator=torch.Generator().manual_seed(0)) * 0.02
    weight[3, 5] = 0.5  # one outlier, as real LLM weights have
    err = {s.label: quantization_error(weight, fake_quantize(weight, s))["relative_error"] for s in TEACHING_SCHEMES}
    assert err["sym-int8-channel"] < err["sym-int8-tensor"] < err["sym-int4-tensor"]
    assert err["sym-int4-b32"] < err["sym-int4-b128"] < err["sym-int4-channel"] < err["sym-int4-tensor"]
    assert err["sym-int8-channel"] < err["sym-int4-b32"]


def test_nf4_matches_bitsandbytes(weight):
    functional = pytest.importorskip("bitsandbytes.functional")
    assert torch.equal(functional.get_4bit_type("nf4", device="cpu").float(), NF4_LEVELS)
    packed, state = functional.quantize_4bit(weight, blocksize=64, quant_type="nf4")
    expected = functional.dequantize_4bit(packed, state)
    torch.testing.assert_close(fake_quantize(weight, Scheme(4, "group", 64, codebook="nf4")), expected)
    codes, absmax = quantize_nf4(weight, 64)
    assert codes.max() <= 15 and absmax.numel() == weight.numel() // 64


def test_error_figures_by_hand():
    w = torch.tensor([[3.0, 4.0]])
    d = torch.tensor([[3.0, 3.0]])
    stats = quantization_error(w, d)
    assert stats["relative_error"] == pytest.approx(1 / 5)
    assert stats["sqnr_db"] == pytest.approx(10 * math.log10(25))
    assert stats["rmse"] == pytest.approx(math.sqrt(0.5)) and stats["max_abs_error"] == 1
    counts, edges = error_histogram(w, d, bins=4, limit=2.0)
    assert counts.tolist() == [0, 1, 1, 0]  # errors -1 and 0 over the bins [-2,-1) [-1,0) [0,1) [1,2]
    assert edges.tolist() == [-2, -1, 0, 1, 2]


def test_outlier_report_by_hand():
    w = torch.zeros(1, 100)
    w[0, :50], w[0, 50:] = 1.0, -1.0
    w[0, 0] = 30.0
    d = w.clone()
    d[0, 0] = 29.0  # all the error is on the outlier
    d[0, 1] = 1.0
    report = outlier_report(w, d, k=3.0)
    assert report["outlier_share"] == pytest.approx(0.01)
    assert report["outlier_error_share"] == 1.0
    assert report["largest_in_sigma"] > 9
    assert report["gaussian_share"] == pytest.approx(0.0027, abs=1e-4)


def test_bits_per_weight():
    assert Scheme(4, "group", 32).bits_per_weight((64, 128)) == 4 + 16 / 32
    assert Scheme(4, "group", 32, symmetric=False).bits_per_weight((64, 128)) == 4 + 24 / 32
    assert Scheme(4, "group", 64, codebook="nf4").bits_per_weight((64, 128)) == 4.5
    assert Scheme(8, "channel").bits_per_weight((64, 128)) == 8 + 16 / 128


def test_bad_schemes_fail_clearly(weight):
    with pytest.raises(VariantError, match="does not divide"):
        fake_quantize(weight, Scheme(4, "group", 48))
    with pytest.raises(VariantError, match="granularity"):
        Scheme(4, "row")
    with pytest.raises(VariantError, match="nf4"):
        Scheme(8, "group", codebook="nf4")


def test_tables_cover_every_scheme_and_layer(weight):
    table = scheme_table(weight)
    assert list(table["scheme"]) == [s.label for s in TEACHING_SCHEMES]
    model = nn.Module()
    model.layers = nn.ModuleList([nn.ModuleDict({"q_proj": nn.Linear(64, 64), "down_proj": nn.Linear(128, 64)})])
    model.lm_head = nn.Linear(64, 10)
    frame = layer_errors(model, TEACHING_SCHEMES[:2], progress=False)
    assert len(frame) == 4 and set(frame["kind"]) == {"q_proj", "down_proj"} and set(frame["block"]) == {0}
