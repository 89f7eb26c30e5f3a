"""Unstructured pruning: magnitude and Wanda scores (Sun et al. 2023, *A Simple and Effective Pruning
Approach for LLMs*: |W| x ||X||), row-wise percent and N:M masks (2:4 as sparse tensor cores take it).
"""
from __future__ import annotations

import torch
from torch import nn

from edgekit.core.errors import VariantError
from edgekit.models.layout import block_linears
from edgekit.pruning.spec import PruneSpec
from edgekit.quantizers.calibration import quantize_blockwise


# ---------------------------------------------------------------- unstructured and N:M masks
def wanda_scores(weight: torch.Tensor, input_norm: torch.Tensor) -> torch.Tensor:
    """Wanda's importance ``|W_ij| * ||X_j||_2`` (Sun et al. 2023, Eq. 1); ``input_norm`` [in]."""
    return weight.detach().abs().float() * input_norm.float()[None, :].to(weight.device)


def row_mask(scores: torch.Tensor, percent: float) -> torch.Tensor:
    """Keep-mask removing, in every output row, the ``round(in * percent / 100)`` lowest scores."""
    k = round(scores.shape[1] * percent / 100)
    mask = torch.ones_like(scores, dtype=torch.bool)
    if k:
        mask.scatter_(1, scores.argsort(dim=1, stable=True)[:, :k], False)
    return mask


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep-mask holding the ``n`` highest scores in every ``m`` consecutive inputs of a row."""
    out_f, in_f = scores.shape
    if in_f % m:
        raise VariantError(f"{n}of{m} needs input widths divisible by {m}; a layer has {in_f} inputs")
    groups = scores.reshape(out_f, in_f // m, m)
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(2, groups.topk(n, dim=2).indices, True)
    return mask.reshape(out_f, in_f)


def keep_mask(scores: torch.Tensor, spec: PruneSpec) -> torch.Tensor:
    return nm_mask(scores, spec.n, spec.m) if spec.n is not None else row_mask(scores, spec.percent)


@torch.no_grad()
def prune_unstructured(model: nn.Module, spec: PruneSpec, calib: torch.Tensor | None = None,
                       progress: bool = True) -> dict[str, torch.Tensor]:
    """Zero the pruned weights of every decoder-block linear in place; returns the keep-masks by name."""
    masks: dict[str, torch.Tensor] = {}

    def prune(name: str, scores: torch.Tensor) -> None:
        linear = model.get_submodule(name)
        masks[name] = keep_mask(scores, spec).to(linear.weight.device)
        linear.weight.mul_(masks[name])

    if spec.method == "magnitude":
        for name, linear in block_linears(model).items():
            prune(name, linear.weight.abs().float())
        return masks
    if calib is None:
        raise VariantError("Wanda needs calibration tokens (calibration_ids)")

    def prune_block(block, names, feed):
        sums: dict[str, torch.Tensor] = {}
        feed(names, lambda n, x: sums.__setitem__(n, sums[n] + (x * x).sum(0) if n in sums else (x * x).sum(0)))
        for name in names:
            prune(name, wanda_scores(model.get_submodule(name).weight, sums[name].sqrt()))

    quantize_blockwise(model, calib, prune_block, f"Wanda {spec.amount}", progress)
    return masks


def sparsity(model: nn.Module) -> float:
    """Share of exact zeros among the decoder-block linear weights."""
    layers = block_linears(model).values()
    return sum(int((m.weight == 0).sum()) for m in layers) / sum(m.weight.numel() for m in layers)
