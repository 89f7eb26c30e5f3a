"""Calibration-based 4/3/2-bit weights (GPTQ, AWQ) as registry variants.

No maintained GPTQ/AWQ library runs with edgekit's pinned CPU environment (GPTQModel needs
a newer torch; AutoGPTQ and AutoAWQ are archived and CUDA-bound), so both methods are
implemented here from their papers. Both write the same :class:`~edgekit.quantizers.packed.PackedLinear`
as round-to-nearest ``int4-g128`` (b-bit codes, fp16 scale and uint8 zero per group), so
footprint, measurement and export are shared and only the choice of codes differs.

- **GPTQ** (Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for Generative
  Pre-trained Transformers", Algorithm 1): per linear layer the Hessian ``H = 2 X^T X / n``
  of its calibration inputs, dampened by ``damp * mean(diag H)``; the upper Cholesky factor
  of ``H^-1``; columns quantized one at a time with the error spread over the columns not
  yet quantized, in lazy batches of ``block_size`` columns; group scales taken from the
  already-updated weights when a group starts (the reference ``groupsize`` option).
- **AWQ** (Lin et al. 2023, "AWQ: Activation-aware Weight Quantization", Section 3.2):
  per input channel a scale ``s = mean|x|^alpha`` (normalised), ``alpha`` searched on a grid
  to minimise ``|| Q(W diag(s)) (diag(s)^-1 X) - W X ||^2`` over the linears that share an
  input; ``1/s`` is folded into the operator before them (RMSNorm weight, ``v_proj`` rows
  for ``o_proj`` when shapes match, ``up_proj`` rows for ``down_proj``), then RTN.

Both run block by block over the calibration split (:mod:`edgekit.quantizers.calibration`), each block
calibrated on the outputs of the blocks already quantized, as both papers do; a checkpoint over
1 GiB (or the option ``low_memory=true``) is calibrated so straight from its shards, one fp32
layer in memory at a time (:mod:`edgekit.quantizers.layerwise`), with the same codes. Mixed precision
lives in :mod:`edgekit.quantizers.mixed`, QAT in :mod:`edgekit.quantizers.qat`.
"""
from __future__ import annotations

import torch
from torch import nn

from edgekit.core.errors import VariantError
from edgekit.core.paths import SAMPLES, SEQ_LEN, variant_calibration_ids
from edgekit.models.layout import replace_module
from edgekit.quantizers.calibration import quantize_blockwise, single_thread
from edgekit.quantizers.layerwise import calibrated_model
from edgekit.quantizers.packed import (
    PackedLinear,
    PackedRunner,
    dequantize,
    group_count,
    held_in_fp32,
    packed_bytes,
    rtn_quantize,
)
from edgekit.variants.registry import Variant, device_of, register


# ---------------------------------------------------------------- GPTQ
def _group_params(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Min-max scale (rounded to the fp16 PackedLinear stores) and zero of one group [out, g]."""
    _, scale, zero = rtn_quantize(w, bits, w.shape[1])
    return scale[:, 0].half().float(), zero[:, 0].float()


@torch.no_grad()
def gptq_quantize(weight: torch.Tensor, hessian: torch.Tensor, bits: int, group_size: int,
                  damp: float = 0.01, block_size: int = 128):
    """GPTQ codes, scales and zeros of one weight [out, in] given its Hessian [in, in].

    The weight is held transposed, [in, out], so that every update runs over contiguous rows: the
    column loop's rank-1 updates (thousands of tiny ops, on one thread) and, after each block of
    columns, the lazy-batch update of the rest (most of a 7B's GPTQ time, in place, on every thread)."""
    Wt = weight.detach().float().T.contiguous()
    cols, out_features = Wt.shape
    # GPTQ wants U, the upper Cholesky factor of H^-1. With J the flip, J H J = L L^T gives H^-1 = U^T U for
    # U = J L^-1 J: one factorization and one triangular solve, 1.6x faster than factor, invert, factor again.
    # Beside ``hessian`` at most two [in, in] steps are held: for a 7B's down_proj (11008 inputs) 0.48 GB each.
    H = hessian.to(Wt.device, torch.float32).flip(0, 1)  # statistics are gathered on the CPU; the weight may be on a
                                                         # GPU
    dead = torch.diag(H) == 0  # in H's reversed order
    H[dead, dead] = 1
    Wt[dead.flip(0)] = 0
    H.diagonal().add_(damp * torch.mean(torch.diag(H)))
    L = torch.linalg.cholesky(H)
    del H
    L_inv = torch.eye(cols, device=L.device)
    torch.linalg.solve_triangular(L, L_inv, upper=False, out=L_inv)  # in place: no third [in, in] step
    del L
    Hinv = L_inv.flip(0, 1)
    del L_inv
    qmax = (1 << bits) - 1
    codes_t = torch.zeros(cols, out_features, dtype=torch.uint8, device=Wt.device)
    scales = torch.zeros(out_features, group_count(cols, group_size), device=Wt.device)  # a ragged last group counts
    zeros = torch.zeros_like(scales, dtype=torch.uint8)
    block = max(block_size // group_size, 1) * group_size  # lazy batches hold whole groups
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        W1t, Hinv1 = Wt[i1:i2], Hinv[i1:i2, i1:i2]  # quantized in place: these rows are not read again
        Err1t = torch.zeros_like(W1t)
        with single_thread():
            for i in range(i2 - i1):
                col = i1 + i
                if col % group_size == 0:
                    scale, zero = _group_params(W1t[i : i + group_size].T, bits)
                    scales[:, col // group_size], zeros[:, col // group_size] = scale, zero.to(torch.uint8)
                w = W1t[i]
                q = torch.clamp(torch.round(w / scale) + zero, 0, qmax)
                codes_t[col] = q.to(torch.uint8)
                err = (w - (q - zero) * scale) / Hinv1[i, i]
                W1t[i:].addr_(Hinv1[i, i:], err, alpha=-1)
                Err1t[i] = err
        Wt[i2:].addmm_(Hinv[i1:i2, i2:].T, Err1t, alpha=-1)
    return codes_t.T.contiguous(), scales, zeros


def quantize_gptq(model: nn.Module, calib: torch.Tensor, bits: int, group_size: int,
                  skip: frozenset[str] = frozenset(), damp: float = 0.01, progress: bool = True,
                  load_block=None) -> nn.Module:
    """Replace every decoder-block linear (except ``skip``) by a GPTQ PackedLinear, block by block, in place
    (``load_block`` as in :func:`edgekit.quantizers.calibration.quantize_blockwise`)."""
    def quantize_block(block, names, feed):
        names = [n for n in names if n not in skip]
        sums, rows = {}, dict.fromkeys(names, 0)

        def add(name, x):
            sums[name] = sums[name].addmm_(x.T, x) if name in sums else x.T @ x
            rows[name] += x.shape[0]

        feed(names, add)
        for name in names:
            linear = model.get_submodule(name)
            codes, scale, zero = gptq_quantize(linear.weight, 2 * sums.pop(name) / rows[name], bits, group_size, damp)
            replace_module(model, name, PackedLinear.from_codes(codes, scale, zero, bits, group_size, linear.bias))

    return quantize_blockwise(model, calib, quantize_block, f"GPTQ int{bits}-g{group_size}", progress,
                              load_block=load_block)


# ---------------------------------------------------------------- AWQ
def rtn_dequantized(weight: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """The weight after an RTN round trip (fp16 scales), as PackedLinear would hold it."""
    codes, scale, zero = rtn_quantize(weight, bits, group_size)
    return dequantize(codes, scale.half().float(), zero, group_size)


def awq_scale(x: torch.Tensor, weights: list[torch.Tensor], bits: int, group_size: int,
              grid: int = 20) -> torch.Tensor:
    """AWQ's per-input-channel scale for linears sharing the input ``x`` [tokens, in]."""
    W = torch.cat([w.float() for w in weights])
    reference = x @ W.T
    x_mean = x.abs().mean(0)
    best, best_loss = torch.ones_like(x_mean), float("inf")
    for k in range(grid):
        s = x_mean.pow(k / grid).clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()
        loss = float(((x @ (rtn_dequantized(W * s, bits, group_size) / s).T - reference) ** 2).mean())
        if loss < best_loss:
            best, best_loss = s, loss
    return best


def _awq_groups(model: nn.Module, block: str) -> list[tuple[nn.Module, list[str]]]:
    """(operator before, linears sharing its output) for a Llama-style decoder block."""
    def get(suffix):
        try:
            return model.get_submodule(f"{block}.{suffix}")
        except AttributeError:
            raise VariantError(f"AWQ here knows Llama-style blocks (input_layernorm, self_attn.q/k/v/o_proj, "
                               f"mlp.gate/up/down_proj); {block} has no {suffix}. Use gptq-* instead") from None

    groups = [(get("input_layernorm"), [f"{block}.self_attn.{p}_proj" for p in "qkv"]),
              (get("post_attention_layernorm"), [f"{block}.mlp.gate_proj", f"{block}.mlp.up_proj"]),
              (get("mlp.up_proj"), [f"{block}.mlp.down_proj"])]
    v, o = get("self_attn.v_proj"), get("self_attn.o_proj")
    if v.weight.shape[0] == o.weight.shape[1]:  # with grouped-query attention the shapes differ: no fold
        groups.insert(1, (v, [f"{block}.self_attn.o_proj"]))
    return groups


@torch.no_grad()
def quantize_awq(model: nn.Module, calib: torch.Tensor, bits: int, group_size: int,
                 skip: frozenset[str] = frozenset(), max_rows: int = 4096, progress: bool = True,
                 load_block=None) -> nn.Module:
    """AWQ-scale then RTN-quantize every decoder-block linear (except ``skip``), block by block, in place
    (``load_block`` as in :func:`edgekit.quantizers.calibration.quantize_blockwise`)."""
    def quantize_block(block, names, feed):
        groups = _awq_groups(model, block)
        inputs: dict[str, list[torch.Tensor]] = {}
        feed([members[0] for _, members in groups], lambda n, x: inputs.setdefault(n, []).append(x))
        scales = []
        for prev, members in groups:
            x = torch.cat(inputs.pop(members[0]))
            x = x[torch.linspace(0, len(x) - 1, min(max_rows, len(x))).long()]
            x = x.to(model.get_submodule(members[0]).weight.device)  # captured on the CPU, searched beside the weights
            with single_thread():
                scales.append(awq_scale(x, [model.get_submodule(m).weight for m in members], bits, group_size))
        for (prev, members), s in zip(groups, scales):  # fold 1/s before, s into the linears: same function
            if isinstance(prev, nn.Linear):
                prev.weight.div_(s[:, None])
                if prev.bias is not None:
                    prev.bias.div_(s)
            else:
                prev.weight.div_(s)
            for m in members:
                model.get_submodule(m).weight.mul_(s)
        for name in names:
            if name not in skip:
                replace_module(model, name, PackedLinear.from_linear(model.get_submodule(name), bits, group_size))

    return quantize_blockwise(model, calib, quantize_block, f"AWQ int{bits}-g{group_size}", progress,
                              load_block=load_block)


# ---------------------------------------------------------------- registry entries
def apply_scheme(model: nn.Module, scheme: Variant, tokenizer, skip: frozenset[str] = frozenset(),
                 calib_from: Variant | None = None, load_block=None) -> nn.Module:
    """Quantize ``model`` in place with an RTN, GPTQ or AWQ scheme (calibration options read from ``calib_from``),
    block by block (``load_block`` as in :func:`edgekit.quantizers.calibration.quantize_blockwise`)."""
    method = scheme.field("method")
    bits, group_size = scheme.bits, scheme.group_size
    if method is None:
        def rtn_block(block, names, feed):
            for name in names:
                if name not in skip:
                    replace_module(model, name, PackedLinear.from_linear(model.get_submodule(name), bits, group_size))
        return quantize_blockwise(model, None, rtn_block, f"RTN int{bits}-g{group_size}", load_block=load_block)
    calib = variant_calibration_ids(calib_from or scheme, tokenizer)
    if method == "gptq":
        return quantize_gptq(model, calib, bits, group_size, skip,
                             damp=float((calib_from or scheme).option("damp", CALIBRATION_DEFAULTS["damp"])),
                             load_block=load_block)
    return quantize_awq(model, calib, bits, group_size, skip, load_block=load_block)


# the options every calibrated variant takes, with their defaults (GPTQ's damping: Frantar et al. 2022, 1%)
CALIBRATION_DEFAULTS = {"samples": SAMPLES, "seq_len": SEQ_LEN, "seed": 0, "damp": 0.01}


@register(r"(?P<method>gptq|awq)-int(?P<bits>[234])-g(?P<group_size>\d+)", "pytorch",
          "calibrated weight-only GPTQ / AWQ into packed codes (options: calibration windows, seed, GPTQ damping)",
          ("gptq-int4-g128", "gptq-int4-g64", "gptq-int3-g128", "gptq-int2-g64", "awq-int4-g128", "awq-int3-g128"),
          linear_bytes=packed_bytes, options=tuple(CALIBRATION_DEFAULTS), load="calibrated",
          dense=held_in_fp32, defaults=CALIBRATION_DEFAULTS)
def build_calibrated(variant: Variant, source: str, tokenizer):
    model = calibrated_model(variant, source, lambda model, load_block: apply_scheme(model, variant, tokenizer,
                                                                                     load_block=load_block),
                             device_of(variant))
    return PackedRunner(str(variant), model, tokenizer)
