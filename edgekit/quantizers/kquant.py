"""K-quant-style weight-only quantization: searched per-block scale and min, themselves quantized.

llama.cpp's K-quants (``ggml-quants.c``, ``make_qkx2_quants`` / ``quantize_row_q4_K``) beat plain
round-to-nearest at the same bits with three choices, all kept here:

1. **blocks of 32 with a scale and a min** (``w = d * q + m``, q in [0, 2^b)), the min a real
   number (not an integer zero point that must hit zero, as in :mod:`edgekit.quantizers.packed`'s RTN);
2. **a searched (d, m)** per block: candidate scales around the min-max one, each followed by a
   weighted least-squares refit of (d, m) to the rounded codes; the one with the least weighted
   squared error wins (weights ``mean|w| + |w|``, llama.cpp's choice without an importance matrix,
   HQQ's idea of optimizing the quantization parameters rather than the rounding);
3. **scales of scales**: the per-block d and m are stored as 8-bit codes against one fp16 scale per
   super-block of 256 columns (K-quants use 6 bits; 8 bits cost 0.125 bit a weight more and lose
   far less), and the 4-bit codes are re-rounded against the stored (d, m).

Bits per weight: ``b + 16/32 + 32/256`` (4.625 at 4 bits, Q4_K is 4.5). More sensitive tensors get
more bits, as Q4_K_M gives Q6_K to attn_v and ffn_down: option ``sensitive=B`` (default 6) for ``v_proj``
and ``down_proj``. Unlike :mod:`edgekit.quantizers.packed`'s variants, the tied token embedding / LM head is
quantized too (option ``embed=B``, default 8; ``embed=0`` keeps it dense), so the weight bytes
compare with a whole GGUF file. A width that 32 or 256 does not divide ends in a shorter block.

On smollm2-135m (4,096 tokens of Hamlet, context 512): ``kq4`` holds 100.07 MB with KL 0.0103 +- 0.0005
(top-1 0.924); llama.cpp's Q4_K_M file holds 103.67 MB with KL 0.0563 +- 0.0025 (top-1 0.846). Part of
that lead is this checkpoint's Q4_1 origin (blocks of 32 that kq4's align with; see its model card).

Variant: ``kq4`` (options ``sensitive=4..8``, ``embed=0|4..8``, ``group=32``; any ``kq2``..``kq8``).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from edgekit.core.errors import VariantError
from edgekit.memory.guard import guarded_load
from edgekit.models.layout import block_linears, replace_module
from edgekit.models.runner import TorchRunner
from edgekit.quantizers.packed import pack_codes, unpack_codes
from edgekit.variants.registry import Variant, device_of, register

SUPER = 256          # columns that share one fp16 scale of the 8-bit block scales and mins
SCALE_BITS = 8
SENSITIVE = ("v_proj", "down_proj")   # Q4_K_M's attn_v and ffn_down


def _blocks(weight: torch.Tensor, group: int) -> tuple[torch.Tensor, int]:
    """[out, in] -> [out, groups, group] (a ragged last block padded by repeating its last column)."""
    out_f, in_f = weight.shape
    groups = -(-in_f // group)
    pad = groups * group - in_f
    w = weight.detach().float()
    if pad:
        w = torch.cat([w, w[:, -1:].expand(-1, pad)], dim=1)
    return w.view(out_f, groups, group), pad


def search_scale_min(x: torch.Tensor, bits: int, steps: int = 20, spread: float = 1.0):
    """Per block (last dim) the (d, m) minimizing sum(wt * (d*q + m - x)^2), q = round((x - m) / d).

    ``make_qkx2_quants``: candidate inverse scales ``(nmax + spread * (k/steps - 0.5)) / (max - min)``
    plus the min-max one; each is followed by the closed-form weighted least-squares (d, m) for its codes.
    """
    nmax = (1 << bits) - 1
    wt = x.abs().mean(-1, keepdim=True) + x.abs()
    lo, hi = x.amin(-1, keepdim=True), x.amax(-1, keepdim=True)
    span = (hi - lo).clamp(min=1e-12)
    best_d, best_m = span / nmax, lo
    best_err = _error(x, wt, best_d, best_m, nmax)
    sw, swx = wt.sum(-1, keepdim=True), (wt * x).sum(-1, keepdim=True)
    for k in range(steps + 1):
        iscale = (nmax + spread * (k / steps - 0.5)) / span
        q = torch.clamp(torch.round(iscale * (x - lo)), 0, nmax)
        swq, swqq, swqx = ((wt * q).sum(-1, keepdim=True), (wt * q * q).sum(-1, keepdim=True),
                           (wt * q * x).sum(-1, keepdim=True))
        det = sw * swqq - swq * swq
        ok = det > 1e-20
        d = torch.where(ok, (sw * swqx - swq * swx) / torch.where(ok, det, 1.0), best_d)
        m = torch.where(ok, (swqq * swx - swq * swqx) / torch.where(ok, det, 1.0), best_m)
        d = d.clamp(min=1e-12)
        err = _error(x, wt, d, m, nmax)
        better = err < best_err
        best_d, best_m, best_err = (torch.where(better, d, best_d), torch.where(better, m, best_m),
                                    torch.where(better, err, best_err))
    return best_d.squeeze(-1), best_m.squeeze(-1)


def _error(x, wt, d, m, nmax):
    q = torch.clamp(torch.round((x - m) / d), 0, nmax)
    return (wt * (d * q + m - x) ** 2).sum(-1, keepdim=True)


class KQuantWeight(nn.Module):
    """A [out, in] weight as b-bit codes in blocks of ``group`` with 8-bit (d, m) under fp16 super-scales."""

    def __init__(self, out_features: int, in_features: int, bits: int, group: int = 32) -> None:
        super().__init__()
        if not 2 <= bits <= 8:
            raise VariantError(f"kq: {bits}-bit codes are not supported; use 2 to 8 bits")
        if SUPER % group:
            raise VariantError(f"kq: group={group} must divide {SUPER}; use 32, 64 or 128")
        self.out_features, self.in_features, self.bits, self.group = out_features, in_features, bits, group
        groups = -(-in_features // group)
        supers = -(-groups // (SUPER // group))
        self.register_buffer("qweight", torch.zeros(0, dtype=torch.uint8))  # set by from_weight
        self.register_buffer("d_codes", torch.zeros(out_features, groups, dtype=torch.uint8))
        self.register_buffer("m_codes", torch.zeros(out_features, groups, dtype=torch.int8))
        self.register_buffer("d_scale", torch.zeros(out_features, supers, dtype=torch.float16))
        self.register_buffer("m_scale", torch.zeros(out_features, supers, dtype=torch.float16))

    @classmethod
    def from_weight(cls, weight: torch.Tensor, bits: int, group: int = 32) -> "KQuantWeight":
        out_f, in_f = weight.shape
        layer = cls(out_f, in_f, bits, group).to(weight.device)
        x, pad = _blocks(weight, group)
        d, m = search_scale_min(x, bits)
        per = SUPER // group
        d_codes, d_scale = _super_quantize(d, per, signed=False)
        m_codes, m_scale = _super_quantize(m, per, signed=True)
        d_q = _super_dequantize(d_codes, d_scale, per).clamp(min=1e-12)
        m_q = _super_dequantize(m_codes, m_scale, per)
        # re-round the codes against the (d, m) that are actually stored
        q = torch.clamp(torch.round((x - m_q.unsqueeze(-1)) / d_q.unsqueeze(-1)), 0, (1 << bits) - 1)
        q = q.reshape(out_f, -1)[:, :in_f].to(torch.uint8)
        layer.qweight = pack_codes(q, bits)
        layer.d_codes.copy_(d_codes)
        layer.m_codes.copy_(m_codes)
        layer.d_scale.copy_(d_scale)
        layer.m_scale.copy_(m_scale)
        return layer

    def dequantize(self, dtype: torch.dtype = torch.float32, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The [out, in] weight (or only ``rows`` of it) as ``dtype``."""
        per = SUPER // self.group
        d = _super_dequantize(self.d_codes, self.d_scale, per)
        m = _super_dequantize(self.m_codes, self.m_scale, per)
        groups = d.shape[1]
        if rows is None:
            q = unpack_codes(self.qweight, self.bits, self.out_features * self.in_features)
            q = q.view(self.out_features, self.in_features)
        else:
            rows = rows.reshape(-1)
            q = self._rows_codes(rows)
            d, m = d[rows], m[rows]
        q = F.pad(q, (0, groups * self.group - self.in_features)).view(q.shape[0], groups, self.group).to(dtype)
        w = q * d.unsqueeze(-1).to(dtype) + m.unsqueeze(-1).to(dtype)
        return w.reshape(q.shape[0], -1)[:, : self.in_features]

    def _rows_codes(self, rows: torch.Tensor) -> torch.Tensor:
        """Codes of some rows only (an embedding lookup), unpacking just the bytes they occupy."""
        flat_rows = rows.reshape(-1)
        if self.in_features % 8 == 0:  # rows start on whole bytes (and whole 8-code words)
            row_bytes = self.in_features * self.bits // 8
            packed = self.qweight[: self.out_features * row_bytes].view(self.out_features, row_bytes)[flat_rows]
            return unpack_codes(packed.reshape(-1), self.bits,
                                flat_rows.numel() * self.in_features).view(-1, self.in_features)
        return unpack_codes(self.qweight, self.bits, self.out_features * self.in_features).view(
            self.out_features, self.in_features)[flat_rows]


def _super_quantize(values: torch.Tensor, per: int, signed: bool) -> tuple[torch.Tensor, torch.Tensor]:
    out_f, groups = values.shape
    supers = -(-groups // per)
    padded = F.pad(values, (0, supers * per - groups)).view(out_f, supers, per)
    top = 127 if signed else 255
    scale = (padded.abs().amax(-1) / top).clamp(min=1e-12).to(torch.float16).float()
    codes = torch.clamp(torch.round(padded / scale.unsqueeze(-1)), -top if signed else 0, top)
    codes = codes.reshape(out_f, -1)[:, :groups]
    return codes.to(torch.int8 if signed else torch.uint8), scale.to(torch.float16)


def _super_dequantize(codes: torch.Tensor, scale: torch.Tensor, per: int) -> torch.Tensor:
    groups = codes.shape[1]
    return codes.float() * scale.float().repeat_interleave(per, dim=1)[:, :groups]


class KQuantLinear(nn.Module):
    def __init__(self, weight: KQuantWeight, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.weight_q = weight
        self.in_features, self.out_features = weight.in_features, weight.out_features
        self.bias = None if bias is None else nn.Parameter(bias.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight_q.dequantize(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    @property
    def compute_path(self) -> str:
        return f"kquant dequantize (q{self.weight_q.bits})"

    def extra_repr(self) -> str:
        q = self.weight_q
        return f"in={q.in_features}, out={q.out_features}, bits={q.bits}, group={q.group}"


class KQuantEmbedding(nn.Module):
    """A token embedding whose rows are gathered from the quantized table (the same table serves the tied LM head),
    times the ``embed_scale`` of an embedding that has one (Gemma's sqrt(hidden))."""

    def __init__(self, weight: KQuantWeight, padding_idx=None, embed_scale: torch.Tensor | None = None) -> None:
        super().__init__()
        self.weight_q = weight
        self.padding_idx = padding_idx
        self.num_embeddings, self.embedding_dim = weight.out_features, weight.in_features
        self.embed_scale = None if embed_scale is None else float(embed_scale)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.weight_q.dequantize(torch.float32, rows=ids).view(*ids.shape, self.embedding_dim)
        return rows if self.embed_scale is None else rows * self.embed_scale


def quantize_kq(model: nn.Module, bits: int = 4, sensitive: int | None = 6, embed: int = 8,
                group: int = 32, progress: bool = True) -> nn.Module:
    """Replace decoder-block linears (and the token embedding / tied LM head unless ``embed=0``) in place."""

    layers = block_linears(model)
    for name, linear in tqdm(layers.items(), desc="kq quantize", disable=not progress, leave=False):
        b = sensitive if sensitive and name.rsplit(".", 1)[-1] in SENSITIVE else bits
        replace_module(model, name, KQuantLinear(KQuantWeight.from_weight(linear.weight, b, group), linear.bias))
    if embed:
        emb = model.get_input_embeddings()
        head = model.get_output_embeddings()
        table = KQuantWeight.from_weight(emb.weight, embed, group)
        tied = head is not None and head.weight is emb.weight
        model.set_input_embeddings(KQuantEmbedding(table, emb.padding_idx, getattr(emb, "embed_scale", None)))
        if tied:
            model.set_output_embeddings(KQuantLinear(table, head.bias))  # the same buffers: counted once
        elif head is not None:
            model.set_output_embeddings(KQuantLinear(KQuantWeight.from_weight(head.weight, embed, group), head.bias))
        model.config.tie_word_embeddings = False  # nothing for transformers to re-tie
    return model


# ---------------------------------------------------------------- the variant
def kq_weight_bytes(bits: int, group: int, out_f: int, in_f: int, bias: bool) -> int:
    """Codes, 8-bit block d and m, fp16 super-scales (and an fp32 bias) of one ``out_f x in_f`` table."""
    groups = -(-in_f // group)
    supers = -(-groups // (SUPER // group))
    return -(-out_f * in_f * bits // 8) + out_f * (2 * groups + 4 * supers) + (4 * out_f if bias else 0)


def kq_linear_bytes(variant, out_f: int, in_f: int, bias: bool, dense: str) -> int:
    """A block linear at the larger of ``bits`` and ``sensitive`` (an upper bound)."""
    bits = max(variant.bits, int(variant.option("sensitive") or 0))
    return kq_weight_bytes(bits, int(variant.option("group")), out_f, in_f, bias)


def kq_table_bytes(variant, rows: int, cols: int, dense: str) -> int:
    """The token embedding (and an untied LM head) at ``embed`` bits; ``embed=0`` keeps it dense."""
    embed = int(variant.option("embed") or 0)
    return kq_weight_bytes(embed, int(variant.option("group")), rows, cols, False) if embed else rows * cols * 4


@register(r"kq(?P<bits>[2-8])", "pytorch",
          "K-quant-style blocks of 32: searched scale and min, 8-bit scales under fp16 super-scales, embedding "
          "quantized too (options sensitive: bits for v_proj/down_proj, embed: bits of the embedding, 0 keeps it "
          "dense)",
          ("kq4", "kq4:sensitive=4,embed=6"), linear_bytes=kq_linear_bytes, options=("sensitive", "embed", "group"),
          load="full-precision", dense=lambda variant, checkpoint: "fp32", table_bytes=kq_table_bytes,
          defaults={"sensitive": 6, "embed": 8, "group": 32})
def build_kq(variant: Variant, source: str, tokenizer):
    model = guarded_load(variant, source, device_of(variant), dtype=torch.float32)
    quantize_kq(model, variant.bits, sensitive=variant.option("sensitive"), embed=int(variant.option("embed")),
                group=int(variant.option("group")))
    return TorchRunner(str(variant), model, tokenizer)
