"""Activation outliers: measure them per channel, and SmoothQuant them away before int8.

Real LLMs develop a few hidden channels whose activations are tens to hundreds of times larger
than the rest (Dettmers et al., *LLM.int8()*, 2022; Xiao et al., *SmoothQuant*, 2023). Quantizing
activations to int8 with one scale per tensor (ONNX Runtime's dynamic and static int8) spends the
256 levels on those few channels and rounds the others to a handful of levels; weight-only schemes
never see it. :func:`activation_maxima` records max |x| per input channel of every linear layer of
each decoder block on calibration windows; :func:`outlier_summary` condenses it to one row a layer.

SmoothQuant moves the difficulty from activations to weights with an exact rewrite: for a linear
layer ``y = x W^T`` and per-channel factors ``s_j = max|x_j|^alpha / max|W_:j|^(1 - alpha)``,
``y = (x / s) (W * s)^T``. The division by ``s`` is folded into what produces ``x`` (the RMSNorm
weight before q/k/v and gate/up, the rows of up_proj before down_proj), so the fp32 model computes
the same function and only the int8 rounding changes. :func:`smooth_quant` applies it in place;
variants ``sq-onnx-int8`` and ``sq-onnx-int8-static`` (option ``alpha``, default 0.5) export the
smoothed model through the ordinary ONNX int8 path (their entry lives with ONNX Runtime's,
:mod:`edgekit.runtimes.onnxruntime`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from edgekit.core.caches import cache_build
from edgekit.core.errors import VariantError
from edgekit.core.paths import begin_with_bos, eval_token_ids, work_dir
from edgekit.memory.guard import guarded_fp32_load
from edgekit.models.layout import llama_layers
from edgekit.models.load import load_tokenizer, model_key
from edgekit.variants.registry import Variant

INPUTS = {"attention": "self_attn.q_proj", "mlp": "mlp.gate_proj", "down_proj": "mlp.down_proj"}


def calibration_windows(tokenizer, windows: int = 8, length: int = 256) -> torch.Tensor:
    """``windows`` consecutive windows of ``length`` tokens of the calibration split (BOS first where the
    tokenizer adds one)."""
    ids = eval_token_ids(tokenizer, "calibration")
    if len(ids) < windows * length:
        raise VariantError(f"the calibration split has {len(ids)} tokens, fewer than {windows} x {length}")
    return begin_with_bos(ids[: windows * length].view(windows, length), tokenizer)


@torch.no_grad()
def activation_maxima(model: nn.Module, batches: torch.Tensor) -> dict[str, np.ndarray]:
    """max |x| per input channel of q_proj ("attention"), gate_proj ("mlp") and down_proj, per layer:
    ``{"attention": [layers, hidden], "mlp": [layers, hidden], "down_proj": [layers, intermediate]}``."""
    layers = llama_layers(model, "activation outliers are measured on Llama-style models "
                                 "(model.layers.*.self_attn.q_proj, mlp.gate/up/down_proj)")
    found: dict[str, list] = {key: [None] * len(layers) for key in INPUTS}
    hooks = []
    for i, layer in enumerate(layers):
        for key, path in INPUTS.items():
            def hook(_module, args, key=key, i=i):
                peak = args[0].detach().abs().reshape(-1, args[0].shape[-1]).amax(0).float()
                found[key][i] = peak if found[key][i] is None else torch.maximum(found[key][i], peak)
            hooks.append(layer.get_submodule(path).register_forward_pre_hook(hook))
    try:
        for row in batches:
            model(row[None].to(next(model.parameters()).device))
    finally:
        for handle in hooks:
            handle.remove()
    return {key: torch.stack(rows).cpu().numpy() for key, rows in found.items()}


def outlier_summary(maxima: dict[str, np.ndarray], threshold: float = 6.0):
    """One row a layer and input: largest max |x|, median channel, their ratio, channels above ``threshold``
    (LLM.int8's default: those channels would stay in fp16 there)."""

    rows = []
    for key, values in maxima.items():
        for layer, channel_max in enumerate(values):
            median = float(np.median(channel_max))
            rows.append({"input": key, "layer": layer, "max_abs": float(channel_max.max()), "median_channel": median,
                         "max_over_median": float(channel_max.max() / max(median, 1e-12)),
                         "top_channel": int(channel_max.argmax()), f"channels_over_{threshold:g}":
                         int((channel_max > threshold).sum())})
    return pd.DataFrame(rows)


@torch.no_grad()
def smooth_quant(model: nn.Module, batches: torch.Tensor, alpha: float = 0.5) -> nn.Module:
    """SmoothQuant in place (see the module docstring): the fp32 function is unchanged."""
    if not 0 <= alpha <= 1:
        raise VariantError(f"SmoothQuant alpha={alpha}; choose a value between 0 and 1 (the paper uses 0.5)")
    maxima = activation_maxima(model, batches)
    for i, layer in enumerate(llama_layers(model, "activation outliers are measured on Llama-style models "
                                                  "(model.layers.*.self_attn.q_proj, mlp.gate/up/down_proj)")):
        attn, mlp = layer.self_attn, layer.mlp
        _fold(maxima["attention"][i], [attn.q_proj, attn.k_proj, attn.v_proj], layer.input_layernorm.weight, alpha)
        _fold(maxima["mlp"][i], [mlp.gate_proj, mlp.up_proj], layer.post_attention_layernorm.weight, alpha)
        _fold(maxima["down_proj"][i], [mlp.down_proj], None, alpha, producer_rows=mlp.up_proj.weight)
    return model


def _fold(act_max: np.ndarray, linears: list[nn.Linear], norm_weight, alpha: float, producer_rows=None) -> None:
    act = torch.from_numpy(act_max).to(linears[0].weight).clamp(min=1e-5)
    weight_max = torch.stack([lin.weight.abs().amax(0) for lin in linears]).amax(0).clamp(min=1e-5)
    s = (act.pow(alpha) / weight_max.pow(1 - alpha)).clamp(min=1e-5)
    for lin in linears:
        lin.weight.mul_(s)
    if norm_weight is not None:
        norm_weight.div_(s)
    else:
        producer_rows.div_(s[:, None])


def smoothed_folder(variant: Variant, source: str, device: str = "cpu") -> Path:
    """A safetensors copy of ``source`` after :func:`smooth_quant` (option ``alpha``) on the calibration split,
    made once; the fp32 load it starts from is admitted by the guard under ``variant`` first."""
    alpha = float(variant.option("alpha"))
    folder = work_dir() / "smoothed" / f"{model_key(source)}-alpha{alpha:g}"
    if not (folder / "config.json").is_file():
        def build(out: Path) -> None:
            tokenizer = load_tokenizer(source)
            model = guarded_fp32_load(variant, source, device, what="smooth")
            smooth_quant(model, calibration_windows(tokenizer), alpha)
            model.save_pretrained(out, safe_serialization=True)
            tokenizer.save_pretrained(out)
        cache_build(folder, build)
    return folder
