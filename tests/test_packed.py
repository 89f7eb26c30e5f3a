"""edgekit.packed: bit packing round trips and PackedLinear against a dequantized reference."""
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from edgekit.errors import VariantError
from edgekit.packed import PackedLinear, pack_codes, quantize_rtn, rtn_quantize, unpack_codes


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_pack_unpack_round_trip(bits):
    gen = torch.Generator().manual_seed(bits)
    codes = torch.randint(0, 2 ** bits, (48, 64), generator=gen, dtype=torch.uint8)
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8
    assert packed.numel() == codes.numel() * bits // 8  # really b bits a code
    assert torch.equal(unpack_codes(packed, bits, codes.numel()).view_as(codes), codes)


def test_pack_layout_is_little_endian_within_a_byte():
    # two 4-bit codes a byte, the first in the low nibble
    assert pack_codes(torch.tensor([1, 2], dtype=torch.uint8), 4).tolist() == [0x21]
    assert pack_codes(torch.tensor([3, 0, 1, 2], dtype=torch.uint8), 2).tolist() == [0b10_01_00_11]


@pytest.mark.parametrize("bits,group", [(2, 32), (3, 64), (4, 32), (4, 128), (8, 64)])
def test_packed_linear_equals_dequantized_reference(bits, group):
    torch.manual_seed(0)
    linear = nn.Linear(256, 96, bias=True)
    packed = PackedLinear.from_linear(linear, bits, group)
    codes, scale, zero = rtn_quantize(linear.weight.data, bits, group)
    scale16 = scale.to(torch.float16).float()  # the layer stores fp16 scales
    reference = ((codes.float().view(96, -1, group) - zero.float()[..., None]) * scale16[..., None]).view(96, 256)
    assert torch.equal(packed.dequantized_weight(), reference)
    x = torch.randn(3, 5, 256)
    torch.testing.assert_close(packed(x), F.linear(x, reference, linear.bias), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_rtn_error_within_half_a_step(bits):
    torch.manual_seed(1)
    w = torch.randn(64, 128)
    codes, scale, zero = rtn_quantize(w, bits, 32)
    assert int(codes.max()) <= 2 ** bits - 1
    deq = ((codes.float().view(64, 4, 32) - zero.float()[..., None]) * scale[..., None]).view(64, 128)
    step = scale.repeat_interleave(32, dim=1)
    assert bool(((deq - w).abs() <= step / 2 + 1e-6).all())


def test_packed_buffers_are_really_small():
    layer = PackedLinear.from_linear(nn.Linear(512, 256, bias=False), 4, 64)
    stored = sum(b.numel() * b.element_size() for b in layer.buffers())
    assert stored == 512 * 256 // 2 + 2 * (256 * 512 // 64) + 256 * 512 // 64  # codes + fp16 scales + uint8 zeros


def test_group_that_does_not_divide_fails_clearly():
    with pytest.raises(VariantError, match="does not divide"):
        PackedLinear.from_linear(nn.Linear(100, 8), 4, 32)
    with pytest.raises(VariantError, match="positive"):
        PackedLinear.from_linear(nn.Linear(64, 8), 4, 0)
    with pytest.raises(VariantError, match="2, 3, 4 or 8"):
        PackedLinear(64, 8, 5, 32, bias=False)


def test_quantize_rtn_replaces_only_block_linears():
    model = nn.Module()
    model.layers = nn.ModuleList([nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32))])
    model.lm_head = nn.Linear(32, 10)
    quantize_rtn(model, 4, 32, skip=frozenset({"layers.0.2"}))
    assert isinstance(model.layers[0][0], PackedLinear)
    assert isinstance(model.layers[0][2], nn.Linear) and not isinstance(model.layers[0][2], PackedLinear)
    assert type(model.lm_head) is nn.Linear
