"""Group-wise integer weight-only quantization with real packed weights (2, 3, 4 or 8 bits).

Each ``nn.Linear`` inside the decoder blocks becomes a :class:`PackedLinear`: its weight is
stored as b-bit codes with one scale and one zero point per group of ``group_size`` input
columns. A width the group size does not divide ends in one shorter group, as llama.cpp's
and ONNX Runtime's MatMulNBits blocks do, so every layer of every model can be quantized.

A layer runs on one of two paths, chosen once when it is packed (:attr:`PackedLinear.kernel`):

- **int4 kernel** (4-bit, groups of 32-256, where the device has it): the codes are packed
  once, at load, into the layout of torch's weight-only int4 kernel — the "tinygemm" kernel
  gpt-fast and torchao use — and every matmul runs fused on the packed weight:
  ``aten._weight_int4pack_mm_for_cpu`` on a CPU, ``aten._weight_int4pack_mm`` on CUDA
  (sm80 or newer). The kernel computes ``w = (q - 8) * scale + zero`` with bf16 scale and
  zero interleaved per group and bf16 activations, so the layer holds N*K/2 bytes of codes
  plus 4 bytes a group. A ragged last group is padded to a whole group (zero activations
  meet the padding, so it adds nothing). Measured on an AVX-512 CPU, one thread, a 1536x576
  layer: as fast as fp32's dense matmul from 1 to 2048 rows, so prompts and scoring use it too;
  its gain is in decoding a model whose weights do not fit the caches (see
  ``benchmarks/bench_int4_kernel.py``).
- **dequantize** (every other case, and the reference): codes packed densely into ``uint8``
  (two 4-bit codes a byte, eight 3-bit codes in three bytes), an fp16 scale and a ``uint8``
  zero a group; the forward pass unpacks and dequantizes the weight (``w = (q - zero) *
  scale``) and runs a dense matmul: the honest cost of weight-only quantization without a
  fused kernel. It holds b bits a weight plus 3 bytes a group.

Round-to-nearest with asymmetric min-max scales is the baseline every calibrated method
(GPTQ, AWQ) and QAT in edgekit is compared against; they produce the same PackedLinear,
so footprint, kernels, export and measurement are shared. Every tensor made here takes its
device from its inputs.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from edgekit.core.dtypes import DTYPE_BYTES, DTYPES
from edgekit.core.errors import VariantError
from edgekit.memory.guard import admit
from edgekit.memory.peak import streamed_load
from edgekit.models.checkpoint import meta_model, stream_into
from edgekit.models.layout import block_linears, replace_module
from edgekit.models.load import load_model, model_config
from edgekit.models.runner import TorchRunner
from edgekit.quantizers.int4_kernel import (
    CPU_KERNEL,
    KERNEL_GROUPS,
    codes_from_cpu_kernel,
    cpu_block_rows,
    int4_kernel_for,
    int4_matmul,
    kernel_scale_and_zero,
    to_kernel_layout,
)
from edgekit.quantizers.int8_table import TABLE_BITS, int8_table_bytes, quantize_table_int8
from edgekit.quantizers.packed_decode import FusedDecoder, fusion_refusal
from edgekit.variants.registry import Variant, compute_dtype, device_of, register


def _codes_per_word(bits: int) -> int:
    return 8 if 8 % bits else 8 // bits  # 3-bit codes come 8 to a 3-byte word


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer codes in [0, 2**bits) into a flat uint8 tensor, ``bits`` bits each (padded to a whole word)."""
    flat = codes.reshape(-1).to(torch.uint8)
    flat = F.pad(flat, (0, -flat.numel() % _codes_per_word(bits)))
    if 8 % bits == 0:
        per_byte = 8 // bits
        shifts = torch.arange(per_byte, dtype=torch.int32, device=flat.device) * bits
        return (flat.view(-1, per_byte).to(torch.int32) << shifts).sum(-1).to(torch.uint8)
    # 3 bits: every 8 codes fill ``bits`` whole bytes; build that little-endian word, cut it into bytes
    code_shifts = torch.arange(8, dtype=torch.int64, device=flat.device) * bits
    word = (flat.view(-1, 8).to(torch.int64) << code_shifts).sum(-1)
    byte_shifts = torch.arange(bits, dtype=torch.int64, device=flat.device) * 8
    return ((word.unsqueeze(-1) >> byte_shifts) & 0xFF).reshape(-1).to(torch.uint8)


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


def check_group(in_features: int, group_size: int) -> None:
    """Refuse a group size that is not a positive number of columns (any width is fine: the last group may be
    short)."""
    if group_size < 1:
        raise VariantError(f"group size {group_size} must be a positive number of input columns (e.g. 32, 64, 128)")


def group_count(in_features: int, group_size: int) -> int:
    """Groups a row of ``in_features`` columns has: whole groups plus one shorter last group if any columns are
    left."""
    check_group(in_features, group_size)
    return -(-in_features // group_size)


def rtn_quantize(weight: torch.Tensor, bits: int, group_size: int):
    """Asymmetric round-to-nearest per group of input columns (a ragged last group gets its own min-max).

    Returns ``codes`` (same shape as ``weight``, uint8), ``scale`` (fp32, [out, groups])
    and ``zero`` (uint8 zero points, [out, groups]).
    """
    out_features, in_features = weight.shape
    groups = group_count(in_features, group_size)
    qmax = (1 << bits) - 1
    w = weight.detach().float()
    pad = groups * group_size - in_features
    if pad:  # repeat the last column: the short group's min and max stay its own
        w = torch.cat([w, w[:, -1:].expand(-1, pad)], dim=1)
    w = w.reshape(out_features, groups, group_size)
    wmin = w.amin(-1).clamp(max=0)
    wmax = w.amax(-1).clamp(min=0)
    scale = ((wmax - wmin) / qmax).clamp(min=1e-8)
    zero = torch.round(-wmin / scale).clamp(0, qmax)
    codes = torch.clamp(torch.round(w / scale.unsqueeze(-1)) + zero.unsqueeze(-1), 0, qmax)
    codes = codes.reshape(out_features, groups * group_size)[:, :in_features]
    return codes.to(torch.uint8), scale, zero.to(torch.uint8)


def dequantize(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(codes - zero) * scale`` per group: codes [out, in], scale and zero [out, groups] -> [out, in]."""
    out_features, in_features = codes.shape
    groups = scale.shape[1]
    q = F.pad(codes, (0, groups * group_size - in_features)).view(out_features, groups, group_size).to(dtype)
    w = (q - zero.unsqueeze(-1).to(dtype)) * scale.unsqueeze(-1).to(dtype)
    return w.reshape(out_features, groups * group_size)[:, :in_features]


class PackedLinear(nn.Module):
    """A linear layer whose weight is b-bit codes with per-group scale and zero, run by the int4 kernel or dequantized.

    ``kernel`` is the fused kernel's name (see :data:`CPU_KERNEL`, :data:`CUDA_KERNEL`) or None
    for the dequantize path; it fixes which buffers the layer holds.
    """

    def __init__(self, in_features: int, out_features: int, bits: int, group_size: int, bias: bool,
                 device: torch.device | str | None = None, kernel: str | None = None) -> None:
        super().__init__()
        if bits not in (2, 3, 4, 8):
            raise VariantError(f"{bits}-bit packing is not supported; use 2, 3, 4 or 8 bits")
        groups = group_count(in_features, group_size)
        self.in_features, self.out_features, self.bits, self.group_size = in_features, out_features, bits, group_size
        self.kernel = kernel
        if kernel is None:
            words = -(-out_features * in_features // _codes_per_word(bits))
            self.register_buffer("qweight", torch.zeros(words * bits * _codes_per_word(bits) // 8, dtype=torch.uint8,
                                                        device=device))
            self.register_buffer("scale", torch.zeros(out_features, groups, dtype=torch.float16, device=device))
            self.register_buffer("zero", torch.zeros(out_features, groups, dtype=torch.uint8, device=device))
        else:  # filled by from_codes: the kernel's own layout and its interleaved bf16 scale/zero
            self.register_buffer("qweight", torch.empty(0, dtype=torch.uint8, device=device))
            self.register_buffer("scale_zero", torch.zeros(groups, out_features, 2, dtype=torch.bfloat16,
                                                           device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, device=device)) if bias else None

    @property
    def padded_in(self) -> int:
        return group_count(self.in_features, self.group_size) * self.group_size

    @property
    def compute_path(self) -> str:
        return "dequantize" if self.kernel is None else f"int4 kernel ({self.kernel})"

    @classmethod
    def from_codes(cls, codes, scale, zero, bits: int, group_size: int, bias=None,
                   kernel: bool | None = None) -> "PackedLinear":
        """A layer holding ``codes`` [out, in] with ``scale``/``zero`` [out, groups], on the codes' device.

        ``kernel``: None uses the int4 kernel where :func:`int4_kernel_for` finds one, False
        keeps the dequantize path (the reference), True insists on the kernel.
        """
        out_features, in_features = codes.shape
        name = int4_kernel_for(codes.device, bits, group_size, out_features) if kernel is not False else None
        if kernel and name is None:
            raise VariantError(f"no int4 kernel runs {bits}-bit groups of {group_size} with {out_features} outputs on "
                               f"{codes.device.type}; it needs 4 bits, a group of "
                               f"{', '.join(map(str, KERNEL_GROUPS))} "
                               "and an AVX2/AVX-512 CPU or an sm80+ GPU. Leave the kernel to the default (automatic)")
        layer = cls(in_features, out_features, bits, group_size, bias is not None, device=codes.device, kernel=name)
        if name is None:
            layer.qweight.copy_(pack_codes(codes, bits))
            layer.scale.copy_(scale.to(torch.float16))
            layer.zero.copy_(zero)
        else:
            layer.qweight = to_kernel_layout(codes, name, layer.padded_in)
            layer.scale_zero.copy_(kernel_scale_and_zero(scale.to(torch.float16), zero))
            if name == CPU_KERNEL and not torch.equal(layer._kernel_codes()[:, :in_features], codes.to(torch.uint8)):
                return cls.from_codes(codes, scale, zero, bits, group_size, bias, kernel=False)  # an unknown layout
        if bias is not None:
            layer.bias.data.copy_(bias.detach().float())
        return layer

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: int, group_size: int, kernel: bool | None = None) -> "PackedLinear":
        codes, scale, zero = rtn_quantize(linear.weight.data, bits, group_size)
        return cls.from_codes(codes, scale, zero, bits, group_size, linear.bias, kernel)

    def _kernel_codes(self) -> torch.Tensor:
        """The codes [out, padded in] the CPU kernel's layout holds."""
        return codes_from_cpu_kernel(self.qweight, self.out_features, self.padded_in)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight [out, in] this layer computes with."""
        if self.kernel is None:
            codes = unpack_codes(self.qweight, self.bits, self.out_features * self.in_features)
            return dequantize(codes.view(self.out_features, self.in_features), self.scale, self.zero,
                              self.group_size, dtype)
        if self.kernel == CPU_KERNEL:
            codes = self._kernel_codes().view(self.out_features, -1, self.group_size).to(dtype)
            s, z = self.scale_zero.to(dtype).transpose(0, 1).unbind(-1)  # [out, groups] each
            w = (codes - 8) * s.unsqueeze(-1) + z.unsqueeze(-1)
            return w.reshape(self.out_features, self.padded_in)[:, : self.in_features]
        # CUDA's tiled layout is read back through the kernel itself: identity rows give W^T (exact in bf16)
        eye = torch.eye(self.padded_in, dtype=torch.bfloat16, device=self.qweight.device)
        return self._kernel_mm(eye).T[:, : self.in_features].to(dtype)

    def _kernel_mm(self, x2: torch.Tensor) -> torch.Tensor:
        """[rows, in] -> [rows, out] bf16 through the fused kernel."""
        return int4_matmul(x2, self.qweight, self.group_size, self.scale_zero, self.padded_in, self.kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        if self.kernel is None:
            return F.linear(x, self.dequantized_weight(x.dtype), bias)
        if x.device.type != self.qweight.device.type:
            raise VariantError(f"this layer was packed for {self.kernel} on {self.qweight.device.type} but got input "
                               f"on {x.device.type}; quantize the model on the device it runs on")
        y = self._kernel_mm(x.reshape(-1, self.in_features)).to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        return y if bias is None else y + bias

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, bits={self.bits}, group={self.group_size}, "
                f"path={self.compute_path}")


def packed_linear_bytes(out_features: int, in_features: int, bits: int, group_size: int, bias: bool,
                        kernel: bool) -> int:
    """Bytes a :class:`PackedLinear` of this shape holds: on the int4 kernel path (``kernel``) codes for the
    width padded to whole groups + bf16 scale and zero a group; else b-bit codes + fp16 scale + uint8 zero."""
    groups = group_count(in_features, group_size)
    bias_bytes = 4 * out_features if bias else 0
    if kernel:
        return out_features * groups * group_size // 2 + 4 * groups * out_features + bias_bytes
    words = -(-out_features * in_features // _codes_per_word(bits))
    return words * bits * _codes_per_word(bits) // 8 + 3 * groups * out_features + bias_bytes


def compute_paths(model: nn.Module) -> dict[str, int]:
    """How many PackedLinear layers of ``model`` run on each path (e.g. {"int4 kernel (...)": 42})."""
    paths: dict[str, int] = {}
    for module in model.modules():
        if isinstance(module, PackedLinear):
            paths[module.compute_path] = paths.get(module.compute_path, 0) + 1
    return paths


def quantize_rtn(model: nn.Module, bits: int, group_size: int, skip: frozenset[str] = frozenset(),
                 kernel: bool | None = None) -> nn.Module:
    """Replace every decoder-block linear layer (except ``skip``) by an RTN PackedLinear, in place.

    ``kernel`` as in :meth:`PackedLinear.from_codes` (None: the int4 kernel where it runs)."""
    layers = block_linears(model)
    check_group(next(iter(layers.values())).in_features, group_size)
    for name, linear in layers.items():
        if name not in skip:
            replace_module(model, name, PackedLinear.from_linear(linear, bits, group_size, kernel))
    return model


def cast_unpacked(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Cast the parameters that are not packed (embeddings, norms, head) to ``dtype``, in place, as
    ``from_pretrained(dtype=...)`` holds them: PackedLinear codes and scales keep the layout their path
    reads, and buffers (RoPE's fp32 frequencies) stay (``model.to(dtype)`` would cast both)."""
    for module in model.modules():
        if isinstance(module, PackedLinear):
            continue
        for t in module.parameters(recurse=False):
            if t.is_floating_point() and t.dtype != dtype:
                t.data = t.data.to(dtype)
    return model


# ---------------------------------------------------------------- the runner
CACHE_STEP = 128  # the fused decoder's cache grows in steps of this many positions (each size compiles once)


class PackedRunner(TorchRunner):
    """A packed model's runner. With ``compile=true`` on a CPU, a llama-family model on the int4 kernel
    decodes greedily on :class:`~edgekit.quantizers.packed_decode.FusedDecoder`; any other model, and
    sampled decoding, as :class:`TorchRunner` does. :attr:`decode_path` says which."""

    def __init__(self, name: str, model: nn.Module, tokenizer) -> None:
        super().__init__(name, model, tokenizer)
        self._fused: FusedDecoder | None = None
        self.decode_path = "eager"

    def compile_decoding(self, cache_tokens: int = 1024) -> None:
        refusal = (fusion_refusal(self.model, CPU_KERNEL, cpu_block_rows()) if self.device.type == "cpu"
                   else f"a {self.device.type} device (the fused decoder runs the CPU int4 kernel)")
        if refusal:
            super().compile_decoding(cache_tokens)
            self.decode_path = f"compiled transformers step (no fused decoder: {refusal})"
        else:
            self._fused = FusedDecoder(self.model)
            self.decode_path = "fused int4 decoder, compiled step"

    def generate_stream(self, input_ids: torch.Tensor, max_new_tokens: int, pick=None):
        if self._fused is None or pick is not None:
            yield from super().generate_stream(input_ids, max_new_tokens, pick)
            return
        ids = input_ids.reshape(-1)
        if max_new_tokens < 1:
            return
        capacity = -(-(ids.numel() + max_new_tokens) // CACHE_STEP) * CACHE_STEP
        if capacity > self._fused.capacity:
            self._fused.reset(capacity)
            self._fused.compile()
        token = int(self._fused.prefill(ids))
        for i in range(max_new_tokens):
            yield token
            if i + 1 < max_new_tokens:
                token = int(self._fused.step(token, ids.numel() + i))

    def weight_bytes(self) -> int:
        return super().weight_bytes() + (self._fused.extra_bytes if self._fused is not None else 0)


# ---------------------------------------------------------------- loading and the registry entry
def load_packed_quantized(source: str, bits: int, group_size: int, device: str = "cpu",
                          dtype: torch.dtype = torch.float32):
    """Load ``source`` as edgekit's packed RTN codes, packing each decoder linear weight as it is read
    (codes from its fp32 values); the rest of the model in ``dtype``. Returns the model in eval mode."""
    folder, config, model, dtype = meta_model(source, dtype)
    targets = block_linears(model)
    check_group(next(iter(targets.values())).in_features, group_size)

    def on_weight(name: str, value: torch.Tensor, bias: torch.Tensor | None) -> None:
        weight = value.to(device=device, dtype=torch.float32)
        codes, scale, zero = rtn_quantize(weight, bits, group_size)
        if bias is None and targets[name].bias is not None:  # its bias comes later in the shard
            bias = torch.zeros(targets[name].out_features)
        replace_module(model, name, PackedLinear.from_codes(codes, scale, zero, bits, group_size,
                                                            None if bias is None else bias.to(device)))
    return stream_into(model, folder, config, dtype, set(targets), on_weight, device, f"pack-on-load int{bits}")


def guarded_packed_load(variant: "str | Variant", source: str, device: str = "cpu",
                        dtype: torch.dtype = torch.float32):
    """A packed RTN variant (``intB-gG``), the rest of the model in ``dtype``: packed tensor by tensor
    while loading when the plan says so (``low_memory``, by default over 1 GiB of checkpoint or on an
    accelerator), else loaded and packed in place (codes from fp32 weights either way)."""
    variant = Variant.parse(variant)
    admit(variant, source, device)
    if streamed_load(model_config(source), variant, torch.device(device).type):
        return load_packed_quantized(source, variant.bits, variant.group_size, device, dtype)
    model = load_model(source, device_map={"": device}, dtype=torch.float32)
    return cast_unpacked(quantize_rtn(model, variant.bits, variant.group_size), dtype)


def held_in_fp32(variant: Variant, checkpoint: str) -> str:
    """Calibrated packed variants (GPTQ, AWQ, mixed, QAT) calibrate and hold the model in fp32:
    embeddings, norms and head stay fp32."""
    return "fp32"


def packed_bytes(variant: Variant, out_f: int, in_f: int, bias: bool, dense: str) -> int:
    """Any variant held as edgekit's PackedLinear (RTN, GPTQ, AWQ, QAT), in the layout it will hold:
    the fused int4 kernel's where one runs that shape (16-row blocks on the CPU, 8 on CUDA), else packed codes."""
    kernel = variant.bits == 4 and variant.group_size in KERNEL_GROUPS and out_f % 16 == 0
    return packed_linear_bytes(out_f, in_f, variant.bits, variant.group_size, bias, kernel)


def packed_rest_dtype(variant: Variant, checkpoint: str = "fp32") -> str:
    """What an RTN packed model holds unpacked (embeddings, norms, head) and computes in: option
    ``compute_dtype``, by default bf16 on CUDA (the int4 kernel's activations, as gpt-fast holds its
    models) and fp32 elsewhere."""
    return compute_dtype(variant)


def packed_table_bytes(variant: Variant, rows: int, cols: int, dense: str) -> int:
    """The token embedding (and an untied LM head) as int8 rows with option ``embed=8``, else dense."""
    return int8_table_bytes(rows, cols) if _table_bits(variant) else rows * cols * DTYPE_BYTES[dense]


def _table_bits(variant: Variant) -> int:
    """The ``embed`` option: 8 holds the embedding and head as int8 rows, 0 (the default) keeps them dense."""
    bits = int(variant.option("embed"))
    if bits not in (0, TABLE_BITS):
        raise VariantError(f"embed={bits} is not offered for {variant.name}; use embed=8 (int8 rows, as llama.cpp's "
                           "Q8_0 table) or embed=0 (dense)")
    return bits


@register(r"int(?P<bits>[2348])-g(?P<group_size>\d+)", "pytorch",
          "group-wise RTN weight-only, real packed codes (edgekit.quantizers.packed); packed while loading over 1 GiB "
          "(options compute_dtype=fp32|bf16|fp16, embed=8: embedding and head as int8 rows)",
          ("int4-g32", "int4-g64", "int4-g128", "int3-g64", "int3-g128", "int2-g32", "int2-g64"),
          linear_bytes=packed_bytes, options=("compute_dtype", "embed"), load="packed", dense=packed_rest_dtype,
          table_bytes=packed_table_bytes, defaults={"embed": 0})
def build_packed(variant: Variant, source: str, tokenizer):
    dtype = DTYPES[packed_rest_dtype(variant)]
    model = guarded_packed_load(variant, source, device_of(variant), dtype)
    if _table_bits(variant):
        quantize_table_int8(model, dtype)
    return PackedRunner(str(variant), model, tokenizer)
