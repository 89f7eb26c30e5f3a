"""The token embedding and LM head held as int8 rows: the ``embed=8`` option of the packed RTN variants.

On a small model the vocabulary table is a large share of what a decoded token reads: SmolLM2-135M's
49,152 x 576 head is 113 MB in fp32 against 66 MB for all its int4-g32 block linears, and llama.cpp's
Q4_0 file holds it as Q8_0. Here it becomes symmetric int8 codes with one bf16 scale a row (absmax / 127),
shared by the embedding lookup and a tied head, held one of two ways:

- **as two 4-bit planes** where torch's CPU int4 kernel runs (:func:`planes_group` says when): each code
  ``c = 16 * hi + lo`` (``hi`` its signed high nibble, ``lo`` its low one) is stored as the two nibbles
  in the kernel's layout, one plane under the other, with (scale, zero) per row chosen so that the kernel
  computes ``16 * hi * s`` and ``lo * s``; the head is one int4 call on both planes and a sum, exactly
  the int8 product. On SmolLM2 (2 cores) a decoded token was 1.10x faster this way than through
  ``aten._weight_int8pack_mm`` (paired, same process), which reads fewer bytes but runs slower. The
  lookup reads rows out of the kernel's layout in place. 1 byte a weight, 8 / group bytes of (scale,
  zero), 2 a row;
- **as int8 codes** elsewhere, the head through ``aten._weight_int8pack_mm`` with bf16 activations and
  scales (its fp32 path is several times slower on the CPU). 1 byte a weight plus 2 a row.
"""
from __future__ import annotations

import torch
from torch import nn

from edgekit.quantizers.int4_kernel import (
    CPU_KERNEL,
    KERNEL_GROUPS,
    cpu_block_rows,
    int4_matmul,
    rows_from_cpu_kernel,
    to_kernel_layout,
)

TABLE_BITS = 8  # the one width held here; embed=0 keeps the table dense


def int8_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8 codes [rows, cols] and bf16 scales [rows] of ``weight``."""
    w = weight.detach().float()
    scale = (w.abs().amax(1) / 127).clamp(min=1e-8).to(torch.bfloat16)
    return torch.round(w / scale.float()[:, None]).clamp(-127, 127).to(torch.int8), scale


def planes_group(rows: int, cols: int, device: torch.device | str = "cpu") -> int | None:
    """The kernel group size a table of this shape is held in as 4-bit planes (the largest that divides
    ``cols``), or None where it is held as int8 codes (no CPU int4 kernel, or rows not in whole blocks)."""
    block = cpu_block_rows()
    if torch.device(device).type != "cpu" or block is None or rows % block:
        return None
    return next((g for g in sorted(KERNEL_GROUPS, reverse=True) if cols % g == 0), None)


def int8_table_bytes(rows: int, cols: int) -> int:
    """Bytes of an int8 table as :class:`Int8Table` holds it on this machine's CPU."""
    group = planes_group(rows, cols)
    return rows * cols + 2 * rows + (8 * rows * cols // group if group else 0)


class Int8Table(nn.Module):
    """The codes and scales of one table; an embedding and a tied head share one instance (counted once)."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        codes, scale = int8_rows(weight)
        self.rows, self.cols = codes.shape
        self.group = planes_group(self.rows, self.cols, weight.device)
        self.block = cpu_block_rows()  # read here once: the compiled decode step cannot ask torch for it
        self.register_buffer("scale", scale)
        if self.group is None:
            self.register_buffer("codes", codes)
            return
        high, low = (codes >> 4).to(torch.int32) + 8, (codes & 0xF).to(torch.int32)  # codes = 16 * (high - 8) + low
        self.register_buffer("planes", to_kernel_layout(torch.cat([high, low]), CPU_KERNEL, self.cols))
        s = scale.float()
        scale_zero = torch.stack([torch.cat([16 * s, s]), torch.cat([torch.zeros_like(s), 8 * s])], dim=-1)
        self.register_buffer("plane_scale_zero", scale_zero.expand(self.cols // self.group, -1, -1)
                             .contiguous().to(torch.bfloat16))

    @property
    def compute_path(self) -> str:
        return ("int8 table as two int4 planes (aten._weight_int4pack_mm_for_cpu)" if self.group
                else "int8 kernel (aten._weight_int8pack_mm)")

    def lookup(self, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Rows ``ids`` (any shape) dequantized to ``dtype``: [*ids.shape, cols]."""
        flat = ids.reshape(-1)
        if self.group is None:
            codes = self.codes[flat].to(dtype)
        else:
            high = rows_from_cpu_kernel(self.planes, flat, self.cols, self.block).to(dtype)
            low = rows_from_cpu_kernel(self.planes, flat + self.rows, self.cols, self.block).to(dtype)
            codes = 16 * (high - 8) + low
        return (codes * self.scale[flat].to(dtype).unsqueeze(-1)).reshape(*ids.shape, self.cols)

    def matmul(self, x2: torch.Tensor) -> torch.Tensor:
        """[m, cols] bf16 activations times the table's rows: [m, rows] fp32."""
        if self.group is None:
            return torch.ops.aten._weight_int8pack_mm(x2, self.codes, self.scale).float()
        both = int4_matmul(x2, self.planes, self.group, self.plane_scale_zero, self.cols)
        return both[:, : self.rows].float() + both[:, self.rows:].float()


class Int8Embedding(nn.Module):
    """Token lookup from an :class:`Int8Table`, times Gemma's ``embed_scale`` if any."""

    def __init__(self, table: Int8Table, dtype: torch.dtype, padding_idx: int | None = None,
                 embed_scale: torch.Tensor | None = None) -> None:
        super().__init__()
        self.table, self.dtype, self.padding_idx = table, dtype, padding_idx
        self.embedding_dim = table.cols
        self.embed_scale = None if embed_scale is None else float(embed_scale)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        rows = self.table.lookup(input_ids, self.dtype)
        return rows if self.embed_scale is None else rows * self.embed_scale


class Int8Head(nn.Module):
    """The LM head on an :class:`Int8Table`: one fused weight-only matmul, logits in the input's dtype."""

    def __init__(self, table: Int8Table, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.table = table
        self.out_features, self.in_features = table.rows, table.cols
        self.bias = None if bias is None else nn.Parameter(bias.detach().float())

    @property
    def compute_path(self) -> str:
        return self.table.compute_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.table.matmul(x.reshape(-1, self.in_features).to(torch.bfloat16)).to(x.dtype)
        y = y.reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias.to(x.dtype)


def quantize_table_int8(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Hold ``model``'s token embedding and LM head as int8 rows, in place; a tied head shares the embedding's
    table, an untied one gets its own. ``dtype``: what the lookup returns (the model's compute dtype)."""
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    tied = head is not None and head.weight.data_ptr() == emb.weight.data_ptr()
    table = Int8Table(emb.weight)
    model.set_input_embeddings(Int8Embedding(table, dtype, emb.padding_idx, getattr(emb, "embed_scale", None)))
    if head is not None:
        model.set_output_embeddings(Int8Head(table if tied else Int8Table(head.weight), head.bias))
    model.config.tie_word_embeddings = False  # nothing for transformers to re-tie
    return model
