"""torch's weight-only int4 kernels: which one runs a layer, and the layouts they read.

``aten._weight_int4pack_mm_for_cpu`` on a CPU and ``aten._weight_int4pack_mm`` on CUDA (sm80+) multiply
activations by 4-bit codes in groups of 32-256 columns with an interleaved bf16 (scale, zero) a group
(``w = (q - 8) * scale + zero``). Packed RTN layers (:mod:`edgekit.quantizers.packed`), the fused decoder
and the int8 table's head planes (:mod:`edgekit.quantizers.int8_table`) all pack through here.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

KERNEL_GROUPS = (32, 64, 128, 256)  # the group sizes torch's int4 kernels take
CPU_KERNEL = "aten._weight_int4pack_mm_for_cpu"
CUDA_KERNEL = "aten._weight_int4pack_mm"


def int4_kernel_for(device: torch.device | str, bits: int, group_size: int, out_features: int) -> str | None:
    """The name of the fused int4 kernel that can run a layer of this shape on ``device``, or None.

    Both kernels take 4-bit codes in groups of 32-256 columns; the CPU one wants 16 output rows
    a block (at least), the CUDA one 8 and an sm80+ GPU (its tensor-core path is bf16).
    """
    device = torch.device(device)
    if bits != 4 or group_size not in KERNEL_GROUPS:
        return None
    if device.type == "cpu" and out_features % 16 == 0 and cpu_block_rows() is not None:
        return CPU_KERNEL
    if device.type == "cuda" and out_features % 8 == 0 and torch.cuda.get_device_capability(device) >= (8, 0):
        return CUDA_KERNEL
    return None


def cpu_block_rows() -> int | None:
    """Rows a block of the CPU kernel's packing, or None where its layout is not one read here.

    ``_convert_weight_to_int4pack_for_cpu`` lays codes out for the ISA its build dispatches to
    (aten/src/ATen/native/cpu/int4mm_kernel.cpp): blocks of 64 rows on AVX-512 and 32 on AVX2,
    each [K, block/2] bytes, a byte pairing rows r and r + block/2 (neighbour rows in a
    shorter last block). Other ISAs are not described here, so they keep the dequantize path.
    Every packed layer is checked against its codes (see :meth:`PackedLinear.from_codes`).
    """
    return {"AVX512": 64, "AVX2": 32}.get(torch.backends.cpu.get_cpu_capability())


def codes_from_cpu_kernel(packed: torch.Tensor, out_features: int, in_features: int) -> torch.Tensor:
    """Unpack the CPU kernel's layout back to codes [out, in] (uint8): the check of each packed layer, and its
    weight."""
    block = cpu_block_rows()
    flat = packed.reshape(-1)
    full = out_features // block
    parts = []
    if full:
        b = flat[: full * in_features * block // 2].view(full, in_features, block // 2)
        rows = torch.cat([b & 0xF, b >> 4], dim=-1)  # low nibbles: rows 0..block/2-1, high: the rest
        parts.append(rows.transpose(1, 2).reshape(full * block, in_features))
    rest = out_features - full * block
    if rest:  # a shorter last block pairs neighbouring rows
        b = flat[full * in_features * block // 2:].view(in_features, rest // 2)
        parts.append(torch.stack([b & 0xF, b >> 4], dim=-1).reshape(in_features, rest).T)
    return torch.cat(parts)


def int4_matmul(x2: torch.Tensor, codes: torch.Tensor, group_size: int, scale_zero: torch.Tensor, padded_in: int,
                kernel: str = CPU_KERNEL) -> torch.Tensor:
    """[rows, in] activations times packed ``codes`` -> [rows, out] bf16 through ``kernel``: the activations
    cast to bf16, a ragged last group met by zero activations in its padding up to ``padded_in`` columns."""
    x2 = x2.to(torch.bfloat16)
    if padded_in != x2.shape[-1]:
        x2 = F.pad(x2, (0, padded_in - x2.shape[-1]))
    op = torch.ops.aten._weight_int4pack_mm_for_cpu if kernel == CPU_KERNEL else torch.ops.aten._weight_int4pack_mm
    return op(x2, codes, group_size, scale_zero)


def rows_from_cpu_kernel(packed: torch.Tensor, rows: torch.Tensor, in_features: int, block: int) -> torch.Tensor:
    """Codes [len(rows), in] (uint8) of some rows of the CPU kernel's layout of ``block``-row blocks
    (:func:`cpu_block_rows`; whole blocks only), read in place: row r is in block r // block, the low nibbles
    of its column r % (block/2), or the high ones."""
    half = block // 2
    within = rows % block
    columns = packed.view(-1, in_features, half)[rows // block, :, within % half]  # [rows, in]
    return (columns >> (4 * (within >= half)).to(torch.uint8).unsqueeze(-1)) & 0xF


def kernel_scale_and_zero(scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """[groups, out, 2] bf16 (scale, zero) for the kernels: (q - z) * s == (q - 8) * s + (8 - z) * s."""
    s = scale.float()
    return torch.stack([s, (8 - zero.float()) * s], dim=-1).transpose(0, 1).contiguous().to(torch.bfloat16)


def to_kernel_layout(codes: torch.Tensor, kernel: str, padded_in: int) -> torch.Tensor:
    """Codes [out, in] -> the packed weight ``kernel`` reads (ragged width padded with zero codes)."""
    codes = F.pad(codes, (0, padded_in - codes.shape[1]))
    if kernel == CPU_KERNEL:
        return torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32), 1)
    tiles = next(t for t in (8, 4, 2) if padded_in % (16 * t) == 0)
    pairs = (codes[:, ::2] << 4 | codes[:, 1::2]).to(torch.uint8)  # the CUDA packer wants even columns high
    return torch.ops.aten._convert_weight_to_int4pack(pairs.contiguous(), tiles)
