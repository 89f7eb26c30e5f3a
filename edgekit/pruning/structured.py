"""Structured pruning that makes the model smaller: MLP channels and attention KV groups ranked by
Wanda-style importance, whole decoder layers by block similarity (Men et al. 2024, *ShortGPT*: block
influence), and the config of the model as held.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn
from torch.nn import functional as F

from edgekit.core.errors import VariantError
from edgekit.models.config import load_config
from edgekit.models.layout import block_linears, llama_layers, split_block
from edgekit.pruning.spec import PruneSpec
from edgekit.quantizers.calibration import collect_inputs
from edgekit.variants.registry import Variant

# ---------------------------------------------------------------- structured: shapes change
STRUCTURED_REFUSAL = ("structured pruning here knows Llama-style models (model.layers.*.self_attn.q/k/v/o_proj, "
                      "mlp.gate/up/down_proj); use prune-magnitude-* or prune-wanda-* for this one")


def kept_channels(intermediate: int, percent: float) -> int:
    """MLP channels kept per block: the requested share, rounded to a multiple of 64 where the width is."""
    align = 64 if intermediate % 64 == 0 and intermediate >= 128 else 1
    kept = round(intermediate * (1 - percent / 100) / align) * align
    return min(max(kept, align), intermediate)


def kept_kv_groups(kv_heads: int, percent: float, name: str = "prune-heads") -> int:
    """Key/value groups kept per block. A group is one key/value head with the query heads that read it
    (grouped-query attention; under multi-head attention every head is its own group), so removing a
    group shrinks q/k/v/o and the KV cache alike."""
    if kv_heads == 1:
        raise VariantError(f"{name}: this model has a single key/value head (multi-query attention), so removing a "
                           "group removes all attention; prune MLP channels or depth instead (prune-mlp-25%, "
                           "prune-depth-33%)")
    drop = round(kv_heads * percent / 100)
    if not 0 < drop < kv_heads:
        raise VariantError(f"{name}: with {kv_heads} key/value head groups, {percent:g}% removes "
                           f"{'no group' if drop == 0 else 'every group'}; choose a share that removes 1 to "
                           f"{kv_heads - 1} of them (one group is {100 / kv_heads:.1f}%)")
    return kv_heads - drop


def dropped_layers_count(layers: int, percent: float, name: str = "prune-depth") -> int:
    drop = round(layers * percent / 100)
    if not 0 < drop < layers:
        raise VariantError(f"{name}: {percent:g}% of {layers} layers removes {drop}; choose a share that removes "
                           f"1 to {layers - 1} layers (one layer is {100 / layers:.1f}%)")
    return drop


def _config_dims(config) -> tuple[int, int, int]:
    heads = config.num_attention_heads
    return heads, getattr(config, "num_key_value_heads", None) or heads, \
        getattr(config, "head_dim", None) or config.hidden_size // heads


def pruned_config(config, variant: "str | Variant"):
    """The config of ``variant``'s pruned model, from the original config alone. The registry entries hand it
    to the planner (``held_config``), so ``plan.weight_bytes(c, v)`` prices it exactly; pass the original
    config there, not this one. Unstructured variants keep the config."""
    spec, name = PruneSpec.of(variant), Variant.parse(variant).name
    cfg = copy.deepcopy(load_config(config))
    if spec.method == "mlp":
        cfg.intermediate_size = kept_channels(cfg.intermediate_size, spec.percent)
    elif spec.method == "heads":
        heads, kv, head_dim = _config_dims(cfg)
        kept = kept_kv_groups(kv, spec.percent, name)
        cfg.head_dim = head_dim
        cfg.num_attention_heads, cfg.num_key_value_heads = kept * (heads // kv), kept
    elif spec.method == "depth":
        drop = dropped_layers_count(cfg.num_hidden_layers, spec.percent, name)
        cfg.num_hidden_layers -= drop
        if getattr(cfg, "layer_types", None):
            cfg.layer_types = cfg.layer_types[: cfg.num_hidden_layers]
    return cfg


def _sliced(linear: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Linear:
    weight = linear.weight.detach()
    weight = weight[rows] if rows is not None else weight
    weight = weight[:, cols] if cols is not None else weight
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=linear.bias is not None,
                    device=weight.device, dtype=weight.dtype)
    new.weight.data.copy_(weight)
    if linear.bias is not None:
        new.bias.data.copy_(linear.bias.detach()[rows] if rows is not None else linear.bias.detach())
    return new


def _input_norms(model: nn.Module, names: list[str], calib: torch.Tensor) -> dict[str, torch.Tensor]:
    """``||X_j||_2`` over the calibration tokens of each named linear's input feature j (one pass)."""
    sums: dict[str, torch.Tensor] = {}
    collect_inputs(model, names, calib, lambda n, x: sums.__setitem__(
        n, sums[n] + (x * x).sum(0) if n in sums else (x * x).sum(0)))
    return {n: s.sqrt() for n, s in sums.items()}


def _output_importance(linear: nn.Linear, input_norm: torch.Tensor) -> torch.Tensor:
    """Per input feature j: ``||X_j|| * ||W[:, j]||``, the norm of what feature j adds to the output."""
    return input_norm.to(linear.weight.device) * linear.weight.detach().float().norm(dim=0)


@torch.no_grad()
def prune_mlp_channels(model: nn.Module, percent: float, calib: torch.Tensor) -> list[list[int]]:
    """Remove the least important MLP channels of every block (same count each); returns the kept indices."""
    layers = llama_layers(model, STRUCTURED_REFUSAL)
    prefix = layers_prefix(model, layers)
    names = [f"{prefix}.{i}.mlp.down_proj" for i in range(len(layers))]
    norms = _input_norms(model, names, calib)
    kept = kept_channels(model.config.intermediate_size, percent)
    chosen = []
    for name, layer in zip(names, layers):
        mlp = layer.mlp
        keep = _output_importance(mlp.down_proj, norms[name]).topk(kept).indices.sort().values
        mlp.gate_proj, mlp.up_proj = _sliced(mlp.gate_proj, rows=keep), _sliced(mlp.up_proj, rows=keep)
        mlp.down_proj = _sliced(mlp.down_proj, cols=keep)
        mlp.intermediate_size = kept
        chosen.append(keep.tolist())
    model.config.intermediate_size = kept
    return chosen


@torch.no_grad()
def prune_attention_heads(model: nn.Module, percent: float, calib: torch.Tensor) -> list[list[int]]:
    """Remove the least important key/value groups (a KV head with its query heads) of every block, from
    q/k/v/o alike; returns the kept groups. A group's importance is the sum over its query heads' channels
    of ``||X_j|| * ||W_o[:, j]||``, what it adds to the residual stream."""
    layers = llama_layers(model, STRUCTURED_REFUSAL)
    prefix = layers_prefix(model, layers)
    heads, kv, head_dim = _config_dims(model.config)
    per_group, kept = heads // kv, kept_kv_groups(kv, percent)
    names = [f"{prefix}.{i}.self_attn.o_proj" for i in range(len(layers))]
    norms = _input_norms(model, names, calib)
    chosen = []
    for name, layer in zip(names, layers):
        attn = layer.self_attn
        score = _output_importance(attn.o_proj, norms[name]).reshape(kv, per_group * head_dim).sum(-1)
        groups = score.topk(kept).indices.sort().values
        dims = torch.arange(head_dim, device=groups.device)
        kv_rows = (groups[:, None] * head_dim + dims).flatten()
        q_heads = (groups[:, None] * per_group + torch.arange(per_group, device=groups.device)).flatten()
        q_rows = (q_heads[:, None] * head_dim + dims).flatten()
        attn.q_proj, attn.o_proj = _sliced(attn.q_proj, rows=q_rows), _sliced(attn.o_proj, cols=q_rows)
        attn.k_proj, attn.v_proj = _sliced(attn.k_proj, rows=kv_rows), _sliced(attn.v_proj, rows=kv_rows)
        chosen.append(groups.tolist())  # num_key_value_groups (query heads per KV head) is unchanged
    model.config.head_dim = head_dim
    model.config.num_attention_heads, model.config.num_key_value_heads = kept * per_group, kept
    return chosen


@torch.no_grad()
def block_similarities(model: nn.Module, calib: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """Mean cosine similarity between the hidden states entering boundary i and boundary j, [L+1, L+1]
    (boundary i = the input of block i; boundary L = the last block's output), over the calibration tokens."""
    layers = llama_layers(model, STRUCTURED_REFUSAL)
    states: list[torch.Tensor] = []

    def grab_input(module, args, kwargs):
        states.append((args[0] if args else kwargs["hidden_states"]).float())

    def grab_output(module, args, output):
        states.append((output[0] if isinstance(output, tuple) else output).float())

    handles = [layer.register_forward_pre_hook(grab_input, with_kwargs=True) for layer in layers]
    handles.append(layers[-1].register_forward_hook(grab_output))
    count = len(layers) + 1
    sims, batches = torch.zeros(count, count), 0
    device = next(model.parameters()).device
    try:
        for start in range(0, len(calib), batch_size):
            states.clear()
            model(input_ids=calib[start : start + batch_size].to(device), use_cache=False)
            flat = torch.stack([s.reshape(-1, s.shape[-1]) for s in states])  # [L+1, tokens, hidden]
            unit = F.normalize(flat, dim=-1)
            sims += torch.einsum("itd,jtd->ij", unit, unit).cpu() / unit.shape[1]
            batches += 1
    finally:
        for handle in handles:
            handle.remove()
    return sims / batches


def layers_to_drop(similarities: torch.Tensor, drop: int, rule: str = "bi") -> list[int]:
    """Which blocks to remove: ``bi`` the ``drop`` of lowest Block Influence 1 - cos(in_i, out_i) (Men et al.
    2024); ``angular`` the contiguous run l..l+drop-1 of least angular distance arccos(cos(in_l, out_l+drop-1)) / pi
    (Gromov et al. 2024)."""
    count = similarities.shape[0] - 1
    if rule == "bi":
        influence = 1 - torch.tensor([float(similarities[i, i + 1]) for i in range(count)])
        return sorted(influence.argsort(stable=True)[:drop].tolist())
    if rule == "angular":
        distance = [math.acos(max(-1.0, min(1.0, float(similarities[i, i + drop])))) / math.pi
                    for i in range(count - drop + 1)]
        start = min(range(len(distance)), key=distance.__getitem__)
        return list(range(start, start + drop))
    raise VariantError(f"rule={rule!r} for depth pruning; choose bi (Men et al.) or angular (Gromov et al.)")


@torch.no_grad()
def prune_depth(model: nn.Module, percent: float, calib: torch.Tensor, rule: str = "bi") -> list[int]:
    """Remove whole decoder layers; returns the indices (in the original model) that were removed."""
    layers = llama_layers(model, STRUCTURED_REFUSAL)
    drop = layers_to_drop(block_similarities(model, calib), dropped_layers_count(len(layers), percent), rule)
    kept = [layer for i, layer in enumerate(layers) if i not in drop]
    model.model.layers = nn.ModuleList(kept)
    for i, layer in enumerate(kept):  # the KV cache is indexed by layer_idx
        layer.self_attn.layer_idx = i
    model.config.num_hidden_layers = len(kept)
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = [t for i, t in enumerate(model.config.layer_types) if i not in drop]
    return drop


def layers_prefix(model: nn.Module, layers: nn.ModuleList) -> str:
    first = next(n for n in block_linears(model) if model.get_submodule(split_block(n)[0]) is layers[0])
    return split_block(first)[0].rsplit(".", 1)[0]
