"""Every tensor a quantization function makes takes its device from its inputs.

A CPU-only suite cannot run CUDA, but the ``meta`` device catches the same bug: a tensor made
without ``device=`` lands on the CPU and the first operation mixing it with a meta input
raises "Expected all tensors to be on the same device" — as it did on a GPU for every packed
variant (issue 16).
"""
import torch
from torch import nn

from edgekit.quantizers.calibrated import gptq_quantize, rtn_dequantized
from edgekit.quantizers.packed import (
    PackedLinear,
    dequantize,
    group_count,
    pack_codes,
    quantize_rtn,
    rtn_quantize,
    unpack_codes,
)

META = torch.device("meta")


def test_packing_functions_keep_the_device():
    codes = torch.zeros(64, 96, dtype=torch.uint8, device=META)
    for bits in (2, 3, 4, 8):
        packed = pack_codes(codes, bits)
        assert packed.device == META and packed.numel() == 64 * 96 * bits // 8
        assert unpack_codes(packed, bits, codes.numel()).device == META
    weight = torch.empty(64, 200, device=META)  # 200 columns: a ragged last group of 8
    q, scale, zero = rtn_quantize(weight, 4, 64)
    assert {q.device, scale.device, zero.device} == {META} and scale.shape == (64, group_count(200, 64))
    assert dequantize(q, scale, zero, 64).device == META
    assert rtn_dequantized(weight, 3, 64).device == META


def test_packed_linear_and_quantize_rtn_keep_the_device():
    model = nn.Module()
    model.layers = nn.ModuleList([nn.Linear(96, 64, device=META), nn.Linear(64, 48, bias=False, device=META)])
    quantize_rtn(model, 3, 32)
    for layer in model.layers:
        assert isinstance(layer, PackedLinear) and all(t.device == META for t in layer.state_dict().values())
        assert layer.dequantized_weight().device == META
    x = torch.empty(2, 5, 96, device=META)
    assert model.layers[1](model.layers[0](x)).device == META
    layer = PackedLinear(96, 64, 4, 32, bias=True, device=META)
    assert all(t.device == META for t in layer.state_dict().values())


def test_gptq_on_a_ragged_width():
    torch.manual_seed(0)
    weight = torch.randn(32, 200)
    x = torch.randn(256, 200)
    codes, scale, zero = gptq_quantize(weight, x.T @ x / 256, 4, 64)
    assert codes.shape == (32, 200) and scale.shape == zero.shape == (32, 4)  # 3 groups of 64 and one of 8
    error = (x @ (dequantize(codes, scale, zero, 64) - weight).T).pow(2).mean()
    rtn = (x @ (rtn_dequantized(weight, 4, 64) - weight).T).pow(2).mean()
    assert error < rtn  # GPTQ still beats round-to-nearest on the output it minimizes


def test_gptq_solves_beside_the_weight():
    """The calibration driver accumulates Hessians on the CPU; GPTQ solves on the weight's device (a GPU run
    mixed cuda:0 and cpu here). A meta weight with a CPU Hessian shows where each tensor goes."""
    weight = torch.empty(32, 64, device=META)
    codes, scale, zero = gptq_quantize(weight, torch.eye(64), 4, 32)
    assert {codes.device, scale.device, zero.device} == {META}
