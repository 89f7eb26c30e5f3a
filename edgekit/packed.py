"""Group-wise integer weight-only quantization with real packed weights (2, 3, 4 or 8 bits).

Each ``nn.Linear`` inside the decoder blocks becomes a :class:`PackedLinear`: its weight is
stored as b-bit codes packed densely into ``uint8`` (two 4-bit codes a byte, eight 3-bit
codes in three bytes), with one fp16 scale and one integer zero point per group of
``group_size`` input columns, so the memory it occupies really is b bits a weight plus
``(16 + 8) / group_size`` bits of metadata. The forward pass unpacks and dequantizes the
weight on the fly (``w = (q - zero) * scale``) and runs a dense matmul: on a CPU this is
the honest cost of weight-only quantization without a fused kernel.

Round-to-nearest with asymmetric min-max scales is the baseline every calibrated method
(GPTQ, AWQ) and QAT in edgekit is compared against; they produce the same PackedLinear,
so footprint, export and measurement are shared.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from edgekit.errors import VariantError


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer codes in [0, 2**bits) into a flat uint8 tensor, ``bits`` bits each."""
    flat = codes.reshape(-1).to(torch.uint8)
    if 8 % bits == 0:
        per_byte = 8 // bits
        lanes = flat.view(-1, per_byte).to(torch.int32) << (torch.arange(per_byte, dtype=torch.int32) * bits)
        return lanes.sum(-1).to(torch.uint8)
    # 3 bits: every 8 codes fill ``bits`` whole bytes; build that little-endian word, cut it into bytes
    word = (flat.view(-1, 8).to(torch.int64) << (torch.arange(8, dtype=torch.int64) * bits)).sum(-1)
    return ((word.unsqueeze(-1) >> (torch.arange(bits, dtype=torch.int64) * 8)) & 0xFF).reshape(-1).to(torch.uint8)


def unpack_codes(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: a flat uint8 tensor of ``numel`` codes."""
    mask = (1 << bits) - 1
    if 8 % bits == 0:
        shifts = torch.arange(8 // bits, dtype=torch.uint8, device=packed.device) * bits
        return ((packed.unsqueeze(-1) >> shifts) & mask).reshape(-1)[:numel]
    byte_shifts = torch.arange(bits, dtype=torch.int64, device=packed.device) * 8
    word = (packed.view(-1, bits).to(torch.int64) << byte_shifts).sum(-1)
    code_shifts = torch.arange(8, dtype=torch.int64, device=packed.device) * bits
    return ((word.unsqueeze(-1) >> code_shifts) & mask).reshape(-1).to(torch.uint8)[:numel]


def rtn_quantize(weight: torch.Tensor, bits: int, group_size: int):
    """Asymmetric round-to-nearest per group of input columns.

    Returns ``codes`` (same shape as ``weight``, uint8), ``scale`` (fp32, [out, in/group])
    and ``zero`` (uint8 zero points, [out, in/group]).
    """
    out_features, in_features = weight.shape
    check_group(in_features, group_size)
    qmax = (1 << bits) - 1
    w = weight.float().reshape(out_features, in_features // group_size, group_size)
    wmin = w.amin(-1).clamp(max=0)
    wmax = w.amax(-1).clamp(min=0)
    scale = ((wmax - wmin) / qmax).clamp(min=1e-8)
    zero = torch.round(-wmin / scale).clamp(0, qmax)
    codes = torch.clamp(torch.round(w / scale.unsqueeze(-1)) + zero.unsqueeze(-1), 0, qmax)
    return codes.reshape(out_features, in_features).to(torch.uint8), scale, zero.to(torch.uint8)


def check_group(in_features: int, group_size: int) -> None:
    if group_size < 1:
        raise VariantError(f"group size {group_size} must be a positive number of input columns (e.g. 32, 64, 128)")
    if in_features % group_size:
        raise VariantError(f"a layer has {in_features} input features, which group size {group_size} does not "
                           f"divide; pick a group size that divides every layer width (e.g. 32)")


class PackedLinear(nn.Module):
    """A linear layer whose weight is b-bit codes packed into uint8 with per-group scale and zero."""

    def __init__(self, in_features: int, out_features: int, bits: int, group_size: int, bias: bool) -> None:
        super().__init__()
        if bits not in (2, 3, 4, 8):
            raise VariantError(f"{bits}-bit packing is not supported; use 2, 3, 4 or 8 bits")
        check_group(in_features, group_size)
        self.in_features, self.out_features, self.bits, self.group_size = in_features, out_features, bits, group_size
        groups = in_features // group_size
        self.register_buffer("qweight", torch.zeros(out_features * in_features * bits // 8, dtype=torch.uint8))
        self.register_buffer("scale", torch.zeros(out_features, groups, dtype=torch.float16))
        self.register_buffer("zero", torch.zeros(out_features, groups, dtype=torch.uint8))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    @classmethod
    def from_codes(cls, codes, scale, zero, bits: int, group_size: int, bias=None) -> "PackedLinear":
        out_features, in_features = codes.shape
        layer = cls(in_features, out_features, bits, group_size, bias is not None)
        layer.qweight.copy_(pack_codes(codes, bits))
        layer.scale.copy_(scale.to(torch.float16))
        layer.zero.copy_(zero)
        if bias is not None:
            layer.bias.data.copy_(bias.detach().float())
        return layer

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: int, group_size: int) -> "PackedLinear":
        codes, scale, zero = rtn_quantize(linear.weight.data, bits, group_size)
        return cls.from_codes(codes, scale, zero, bits, group_size, linear.bias)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        codes = unpack_codes(self.qweight, self.bits, self.out_features * self.in_features)
        codes = codes.view(self.out_features, -1, self.group_size).to(dtype)
        w = (codes - self.zero.unsqueeze(-1).to(dtype)) * self.scale.unsqueeze(-1).to(dtype)
        return w.reshape(self.out_features, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantized_weight(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, bits={self.bits}, group={self.group_size}"


def block_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """The linear layers inside the decoder blocks (attention and MLP projections).

    Embeddings and the LM head stay at full precision, as bitsandbytes leaves them too, so
    every PyTorch scheme quantizes the same set of weights.
    """
    layers = {name: module for name, module in model.named_modules()
              if isinstance(module, nn.Linear) and (".layers." in f".{name}" or ".h." in f".{name}")}
    if not layers:
        raise VariantError("found no linear layers inside decoder blocks (model.layers.* or transformer.h.*); "
                           "this architecture is not supported by group-wise quantization")
    return layers


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def quantize_rtn(model: nn.Module, bits: int, group_size: int, skip: frozenset[str] = frozenset()) -> nn.Module:
    """Replace every decoder-block linear layer (except ``skip``) by an RTN PackedLinear, in place."""
    layers = block_linears(model)
    for name in layers:
        check_group(layers[name].in_features, group_size)
    for name, linear in layers.items():
        if name not in skip:
            replace_module(model, name, PackedLinear.from_linear(linear, bits, group_size))
    return model
