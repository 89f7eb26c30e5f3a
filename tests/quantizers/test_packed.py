"""edgekit.quantizers.packed: bit packing round trips, ragged groups, the int4 kernel path against the dequantize
path."""
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from edgekit.core.errors import VariantError
from edgekit.quantizers.packed import (
    CPU_KERNEL,
    PackedLinear,
    compute_paths,
    dequantize,
    group_count,
    int4_kernel_for,
    pack_codes,
    packed_linear_bytes,
    quantize_rtn,
    rtn_quantize,
    unpack_codes,
)

needs_cpu_kernel = pytest.mark.skipif(int4_kernel_for("cpu", 4, 32, 64) is None,
                                      reason="this CPU's int4 kernel layout is not one edgekit reads (AVX2/AVX-512)")


def held_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_pack_unpack_round_trip(bits):
    gen = torch.Generator().manual_seed(bits)
    codes = torch.randint(0, 2 ** bits, (48, 64), generator=gen, dtype=torch.uint8)
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8
    assert packed.numel() == codes.numel() * bits // 8  # really b bits a code
    assert torch.equal(unpack_codes(packed, bits, codes.numel()).view_as(codes), codes)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_pack_pads_an_odd_count_to_a_whole_word(bits):
    codes = torch.randint(0, 2 ** bits, (7, 5), dtype=torch.uint8)
    packed = pack_codes(codes, bits)
    assert packed.numel() == {2: 9, 3: 15, 4: 18}[bits]  # 35 codes: 9 bytes of four, 5 words of 8 (3 bytes), 18 of two
    assert torch.equal(unpack_codes(packed, bits, 35).view(7, 5), codes)


def test_pack_layout_is_little_endian_within_a_byte():
    # two 4-bit codes a byte, the first in the low nibble
    assert pack_codes(torch.tensor([1, 2], dtype=torch.uint8), 4).tolist() == [0x21]
    assert pack_codes(torch.tensor([3, 0, 1, 2], dtype=torch.uint8), 2).tolist() == [0b10_01_00_11]


@pytest.mark.parametrize("bits,group", [(2, 32), (3, 64), (4, 32), (4, 128), (8, 64)])
def test_packed_linear_equals_dequantized_reference(bits, group):
    torch.manual_seed(0)
    linear = nn.Linear(256, 96, bias=True)
    packed = PackedLinear.from_linear(linear, bits, group, kernel=False)
    assert packed.compute_path == "dequantize"
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


def test_dequantize_path_holds_b_bits_plus_three_bytes_a_group():
    layer = PackedLinear.from_linear(nn.Linear(512, 256, bias=False), 4, 64, kernel=False)
    assert held_bytes(layer) == 512 * 256 // 2 + 2 * (256 * 512 // 64) + 256 * 512 // 64  # codes + fp16 scales +
                                                                                          # uint8 zeros
    assert held_bytes(layer) == packed_linear_bytes(256, 512, 4, 64, bias=False, kernel=False)


# ---------------------------------------------------------------- ragged last group (a width the group does not
# divide)
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_ragged_last_group_has_its_own_scale(bits):
    torch.manual_seed(2)
    w = torch.randn(32, 576)
    w[:, 512:] *= 10  # the short last group (64 of 128 columns) has a range of its own
    codes, scale, zero = rtn_quantize(w, bits, 128)
    assert codes.shape == (32, 576) and scale.shape == zero.shape == (32, 5) == (32, group_count(576, 128))
    deq = dequantize(codes, scale, zero, 128)
    step = scale.repeat_interleave(128, dim=1)[:, :576]
    assert bool(((deq - w).abs() <= step / 2 + 1e-5).all())
    tail = w[:, 512:]  # min-max of the 64 real columns only, not of padding
    torch.testing.assert_close(scale[:, 4], (tail.amax(1).clamp(min=0) - tail.amin(1).clamp(max=0)) / (2 ** bits - 1))


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_ragged_layer_round_trip_bytes_and_logits(bits):
    torch.manual_seed(3)
    linear = nn.Linear(576, 96, bias=True)  # 576 = 4.5 groups of 128
    layer = PackedLinear.from_linear(linear, bits, 128, kernel=False)
    codes, scale, zero = rtn_quantize(linear.weight.data, bits, 128)
    assert torch.equal(unpack_codes(layer.qweight, bits, codes.numel()).view_as(codes), codes)
    assert held_bytes(layer) == 96 * 576 * bits // 8 + 3 * 96 * 5 + 4 * 96
    assert held_bytes(layer) == packed_linear_bytes(96, 576, bits, 128, bias=True, kernel=False)
    x = torch.randn(2, 7, 576)
    reference = F.linear(x, dequantize(codes, scale.half().float(), zero, 128), linear.bias)
    torch.testing.assert_close(layer(x), reference, rtol=1e-5, atol=1e-5)


def test_group_size_must_be_positive_and_bits_supported():
    with pytest.raises(VariantError, match="positive"):
        PackedLinear.from_linear(nn.Linear(64, 8), 4, 0)
    with pytest.raises(VariantError, match="2, 3, 4 or 8"):
        PackedLinear(64, 8, 5, 32, bias=False)


# ---------------------------------------------------------------- the int4 kernel path
def test_kernel_is_chosen_only_where_the_format_allows():
    assert int4_kernel_for("cpu", 3, 32, 64) is None  # 3-bit: dequantize
    assert int4_kernel_for("cpu", 4, 16, 64) is None  # group 16: not a kernel group size
    assert int4_kernel_for("cpu", 4, 512, 64) is None
    assert int4_kernel_for("cpu", 4, 32, 40) is None  # rows not a multiple of 16
    assert int4_kernel_for("meta", 4, 32, 64) is None
    with pytest.raises(VariantError, match="no int4 kernel"):
        PackedLinear.from_linear(nn.Linear(64, 40), 4, 32, kernel=True)
    assert PackedLinear.from_linear(nn.Linear(64, 40), 4, 32).compute_path == "dequantize"


@needs_cpu_kernel
@pytest.mark.parametrize("in_features,group", [(256, 32), (256, 64), (512, 128), (512, 256), (576, 128), (200, 64)])
def test_kernel_path_matches_dequantize_path(in_features, group):
    torch.manual_seed(4)
    linear = nn.Linear(in_features, 112, bias=True)  # 112 rows: one full block of 64 and a shorter one of 48 on
                                                     # AVX-512
    reference = PackedLinear.from_linear(linear, 4, group, kernel=False)
    kernel = PackedLinear.from_linear(linear, 4, group)
    assert kernel.kernel == CPU_KERNEL and "int4 kernel" in kernel.compute_path
    # the same codes: the weight read back from the kernel's layout is the reference's, up to bf16 scale and
    # zero (relative error 2**-9 on (q - 8) * s and (8 - z) * s, both at most 8 steps): far below one step
    step = reference.scale.float().repeat_interleave(group, dim=1)[:, :in_features]
    assert float(((kernel.dequantized_weight() - reference.dequantized_weight()).abs() / step).max()) < 0.05
    for rows in (1, 3, 70):  # decoding, a short and a long prompt
        x = torch.randn(rows, in_features)
        with torch.no_grad():
            want, got = reference(x), kernel(x)
        assert got.dtype == x.dtype and got.shape == want.shape
        assert float((got - want).norm() / want.norm()) < 0.01  # bf16 activations and scales
    # bytes: codes for the width padded to whole groups + bf16 (scale, zero) a group + fp32 bias
    groups = group_count(in_features, group)
    assert held_bytes(kernel) == 112 * groups * group // 2 + 4 * groups * 112 + 4 * 112
    assert held_bytes(kernel) == packed_linear_bytes(112, in_features, 4, group, bias=True, kernel=True)


@needs_cpu_kernel
def test_kernel_model_logits_close_to_dequantize_model(default_model):
    from edgekit.models.load import load_model

    ids = torch.randint(0, 4096, (2, 48), generator=torch.Generator().manual_seed(5))
    logits, bytes_, paths = {}, {}, {}
    for kernel in (False, None):
        model = quantize_rtn(load_model(default_model), 4, 32, kernel=kernel)
        with torch.inference_mode():
            logits[kernel] = model(input_ids=ids).logits
        bytes_[kernel] = held_bytes(model)
        paths[kernel] = compute_paths(model)
    assert paths[False] == {"dequantize": 42} and paths[None] == {f"int4 kernel ({CPU_KERNEL})": 42}
    agreement = float((logits[None].argmax(-1) == logits[False].argmax(-1)).float().mean())
    assert agreement > 0.95, agreement
    assert float((logits[None] - logits[False]).norm() / logits[False].norm()) < 0.02
    layers = [m for m in model.modules() if isinstance(m, PackedLinear)]
    extra = sum(m.out_features * group_count(m.in_features, 32) for m in layers)  # 4 instead of 3 bytes a group
    assert bytes_[None] - bytes_[False] == extra


@needs_cpu_kernel
def test_kernel_layer_refuses_input_on_another_device():
    layer = PackedLinear.from_linear(nn.Linear(64, 32), 4, 32)
    with pytest.raises(VariantError, match="quantize the model on the device it runs on"):
        layer(torch.randn(1, 64, device="meta"))


def test_quantize_rtn_replaces_only_block_linears():
    model = nn.Module()
    model.layers = nn.ModuleList([nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32))])
    model.lm_head = nn.Linear(32, 10)
    quantize_rtn(model, 4, 32, skip=frozenset({"layers.0.2"}))
    assert isinstance(model.layers[0][0], PackedLinear)
    assert isinstance(model.layers[0][2], nn.Linear) and not isinstance(model.layers[0][2], PackedLinear)
    assert type(model.lm_head) is nn.Linear
