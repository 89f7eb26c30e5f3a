"""The token embedding and LM head held as int8 rows: the ``embed=8`` option of the packed RTN variants.

On a small model the vocabulary table is a large share of what a decoded token reads: SmolLM2-135M's
49,152 x 576 head is 113 MB in fp32 against 66 MB for all its int4-g32 block linears, and llama.cpp's
Q4_0 file holds it as Q8_0. Here it becomes symmetric int8 codes with one scale a row (absmax / 127),
shared by the embedding lookup and a tied head, and the head's matmul runs fused on the codes:
``aten._weight_int8pack_mm`` with bf16 activations and scales (its fp32 path is several times slower
on the CPU than its bf16 one). The table then holds 1 byte a weight plus 2 bytes a row.
"""
from __future__ import annotations

import torch
from torch import nn

TABLE_BITS = 8  # the one width held here; embed=0 keeps the table dense


def int8_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8 codes [rows, cols] and bf16 scales [rows] of ``weight``."""
    w = weight.detach().float()
    scale = (w.abs().amax(1) / 127).clamp(min=1e-8)
    return torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8), scale.to(torch.bfloat16)


def int8_table_bytes(rows: int, cols: int) -> int:
    """Bytes of an int8 table: a code a weight and a bf16 scale a row."""
    return rows * cols + 2 * rows


class Int8Table(nn.Module):
    """The codes and scales of one table; an embedding and a tied head share one instance (counted once)."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        codes, scale = int8_rows(weight)
        self.register_buffer("codes", codes)
        self.register_buffer("scale", scale)


class Int8Embedding(nn.Module):
    """Token lookup from an :class:`Int8Table` (rows dequantized on demand), times Gemma's ``embed_scale`` if any."""

    def __init__(self, table: Int8Table, dtype: torch.dtype, padding_idx: int | None = None,
                 embed_scale: torch.Tensor | None = None) -> None:
        super().__init__()
        self.table, self.dtype, self.padding_idx = table, dtype, padding_idx
        self.embedding_dim = table.codes.shape[1]
        self.embed_scale = None if embed_scale is None else float(embed_scale)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        rows = self.table.codes[input_ids].to(self.dtype) * self.table.scale[input_ids].to(self.dtype).unsqueeze(-1)
        return rows if self.embed_scale is None else rows * self.embed_scale


class Int8Head(nn.Module):
    """The LM head on an :class:`Int8Table`: one fused int8 weight-only matmul, logits in the input's dtype."""

    compute_path = "int8 kernel (aten._weight_int8pack_mm)"

    def __init__(self, table: Int8Table, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.table = table
        self.out_features, self.in_features = table.codes.shape
        self.bias = None if bias is None else nn.Parameter(bias.detach().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features).to(torch.bfloat16)
        y = torch.ops.aten._weight_int8pack_mm(x2, self.table.codes, self.table.scale).to(x.dtype)
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
