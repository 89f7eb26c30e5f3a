"""Grid provenance: which quantization grid a checkpoint's weights already lie on.

A checkpoint dequantized from a quantized file (SmolLM2 from Q4_1, Gemma 3 from Q4_K_M) is not a
continuous one: its weights sit on that file's grid, and a scheme that lands on the same grid
reproduces them almost exactly, so it looks far better there than on a bf16 original. This module
measures it with the **requantization error ratio**

    r = MSE(w, Q(w)) / mean(step^2 / 12)

for each grid Q of :data:`GRIDS` (``step``: Q's quantization step in each block). Rounding
continuous weights to a uniform grid costs about ``step^2/12`` (r near 1); weights already on Q's grid
come back unchanged (r near 0). A tensor is on the first (coarsest) grid with ``r <`` :data:`ON_GRID`.

The grids, along each row's input columns from the row's start:
- llama.cpp's legacy blocks of 32 with their own rounding rules: ``Q4_0``/``Q5_0`` (symmetric, the
  block's signed extreme at ``-2^(b-1) d``), ``Q4_1``/``Q5_1`` (asymmetric min-max), ``Q8_0`` (absmax/127);
- K-quant sub-blocks (``Q4_K``/``Q5_K``: asymmetric, 32; ``Q6_K``: symmetric, 16): llama.cpp picks their
  scales by a search that cannot be replayed, so the step is *fitted*: the smallest gap between the
  block's distinct values (or a small fraction of it), never below the step that covers the block's
  range with 2^b levels (what continuous weights get, so they still read r near 1);
- groups of 128 as PyTorch RTN schemes hold them (``g128-asym4``: edgekit.quantizers.packed's integer zero point;
  ``g128-sym4``: absmax/7).

Large tensors are sampled (:data:`MAX_ROWS` evenly spaced rows); only whole blocks are measured.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from edgekit.models.checkpoint import read_tensor, tensor_shards
from edgekit.models.layout import BLOCK
from edgekit.models.load import resolve_source

ON_GRID = 0.05      # r below this: the weights lie on the grid
MAX_ROWS = 128      # rows of a tensor measured (evenly spaced) when it has more: thousands of blocks
DUPLICATE = 1e-3    # gaps below this share of a block's range are the same level (fitted grids)
FIT_DIVISORS = 4    # fitted grids try steps of the smallest gap / 1..4


@dataclass(frozen=True)
class Grid:
    name: str
    summary: str
    bits: int
    block: int
    symmetric: bool
    rule: str           # "legacy" (llama.cpp's Q4_0..Q8_0 rounding), "fitted" (K-quant sub-blocks), "rtn" (PyTorch
                        # groups)


GRIDS: tuple[Grid, ...] = (  # coarsest first: a tensor is reported on the first grid it lies on
    Grid("Q4_0", "sym 4-bit b32", 4, 32, True, "legacy"),
    Grid("Q4_1", "asym 4-bit b32", 4, 32, False, "legacy"),
    Grid("Q4_K", "asym 4-bit K-quant sub-blocks of 32", 4, 32, False, "fitted"),
    Grid("g128-sym4", "sym 4-bit g128", 4, 128, True, "rtn"),
    Grid("g128-asym4", "asym 4-bit g128, integer zero point", 4, 128, False, "rtn"),
    Grid("Q5_0", "sym 5-bit b32", 5, 32, True, "legacy"),
    Grid("Q5_1", "asym 5-bit b32", 5, 32, False, "legacy"),
    Grid("Q5_K", "asym 5-bit K-quant sub-blocks of 32", 5, 32, False, "fitted"),
    Grid("Q6_K", "sym 6-bit K-quant sub-blocks of 16", 6, 16, True, "fitted"),
    Grid("Q8_0", "sym 8-bit b32", 8, 32, True, "legacy"),
)
GRID_BY_NAME = {g.name: g for g in GRIDS}


def _blocks(weight: torch.Tensor, block: int) -> torch.Tensor | None:
    """[rows, in] -> [rows * whole blocks, block] (sampled rows, whole blocks only); None if no whole block."""
    w = weight.detach().float()
    if w.dim() != 2:
        w = w.reshape(w.shape[0], -1)
    if w.shape[0] > MAX_ROWS:
        w = w[torch.linspace(0, w.shape[0] - 1, MAX_ROWS).long()]
    whole = w.shape[1] // block * block
    return w[:, :whole].reshape(-1, block) if whole else None


def _fitted(x: torch.Tensor, grid: Grid) -> tuple[torch.Tensor, torch.Tensor]:
    """K-quant sub-blocks rounded onto the b-bit grid that fits each best: steps ``gap / k`` (``gap``: the
    smallest gap between the block's distinct values; k up to :data:`FIT_DIVISORS`, as 16 values on 64
    levels need not hold two neighbours), never below the step that covers the block with 2^b levels."""
    levels = 1 << grid.bits
    half = levels // 2
    lo, hi = x.amin(-1, keepdim=True), x.amax(-1, keepdim=True)
    cover = (torch.maximum(hi.abs(), lo.abs()) / half if grid.symmetric else (hi - lo) / (levels - 1)).clamp(min=1e-30)
    gaps = x.sort(-1).values.diff(dim=-1)
    gaps = torch.where(gaps > DUPLICATE * (hi - lo).clamp(min=1e-30), gaps, torch.full_like(gaps, float("inf")))
    gap = gaps.amin(-1, keepdim=True)
    gap = torch.where(gap.isfinite(), gap, cover)  # a constant block: its cover
    best = best_step = best_error = None
    for k in range(1, FIT_DIVISORS + 1):
        step = torch.maximum(gap / k, cover)
        if grid.symmetric:  # the scale's sign is free (llama.cpp puts the block's signed extreme at -half)
            rounded = torch.clamp(torch.round(x / step), -half, half) * step
        else:
            rounded = torch.clamp(torch.round((x - lo) / step), 0, levels - 1) * step + lo
        error = ((x - rounded) ** 2).mean(-1, keepdim=True) / step ** 2
        if best is None:
            best, best_step, best_error = rounded, step, error
        else:
            better = error < best_error
            best = torch.where(better, rounded, best)
            best_step, best_error = torch.where(better, step, best_step), torch.where(better, error, best_error)
    return best, best_step


def requantize(x: torch.Tensor, grid: Grid) -> tuple[torch.Tensor, torch.Tensor]:
    """Blocks ``x`` [n, block] rounded onto ``grid``: (the rounded blocks, each block's step [n, 1])."""
    levels = 1 << grid.bits
    half = levels // 2
    if grid.rule == "fitted":
        return _fitted(x, grid)
    if grid.rule == "legacy" and grid.symmetric and grid.bits == 8:  # Q8_0: absmax / 127
        step = (x.abs().amax(-1, keepdim=True) / 127).clamp(min=1e-30)
        return torch.clamp(torch.round(x / step), -127, 127) * step, step
    if grid.rule == "legacy" and grid.symmetric:  # Q4_0, Q5_0: the signed extreme is -half * d
        extreme = x.gather(-1, x.abs().argmax(-1, keepdim=True))
        d = extreme / -half
        d = torch.where(d == 0, torch.full_like(d, 1e-30), d)
        return (torch.clamp(torch.round(x / d) + half, 0, levels - 1) - half) * d, d.abs()
    if grid.rule == "legacy":  # Q4_1, Q5_1: min-max
        lo, hi = x.amin(-1, keepdim=True), x.amax(-1, keepdim=True)
        d = ((hi - lo) / (levels - 1)).clamp(min=1e-30)
        return torch.clamp(torch.round((x - lo) / d), 0, levels - 1) * d + lo, d
    if grid.symmetric:  # g128-sym4: absmax / (2^(b-1) - 1)
        step = (x.abs().amax(-1, keepdim=True) / (half - 1)).clamp(min=1e-30)
        return torch.clamp(torch.round(x / step), -half, half - 1) * step, step
    # edgekit.quantizers.packed.rtn_quantize
    lo, hi = x.amin(-1, keepdim=True).clamp(max=0), x.amax(-1, keepdim=True).clamp(min=0)
    step = ((hi - lo) / (levels - 1)).clamp(min=1e-8)
    zero = torch.round(-lo / step).clamp(0, levels - 1)
    return (torch.clamp(torch.round(x / step) + zero, 0, levels - 1) - zero) * step, step


def error_ratio(weight: torch.Tensor, grid: Grid) -> float | None:
    """r = MSE(w, Q(w)) / mean(step^2/12) of ``weight`` on ``grid`` (None: no whole block of the grid fits a row)."""
    x = _blocks(weight, grid.block)
    if x is None:
        return None
    rounded, step = requantize(x, grid)
    reference = float((step ** 2).mean() / 12)
    error = float(((x - rounded) ** 2).mean())
    return error / reference if reference > 0 else 0.0


def grid_of(weight: torch.Tensor) -> tuple[str | None, dict[str, float]]:
    """(the coarsest grid ``weight`` lies on, or None; r on every grid that fits it)."""
    ratios = {g.name: r for g in GRIDS if (r := error_ratio(weight, g)) is not None}
    found = next((name for name, r in ratios.items() if r < ON_GRID), None)
    return found, ratios


def module_group(name: str) -> str | None:
    """A checkpoint tensor's group: a block linear by kind (``q_proj``, ``down_proj``...), ``embeddings``,
    ``head``; None for what is not a 2-D weight matrix of those (norms, biases)."""
    if not name.endswith(".weight"):
        return None
    match = BLOCK.match(name[: -len(".weight")])
    if match and match["module"]:
        return match["module"].rsplit(".", 1)[-1]
    if "embed" in name or name.endswith("wte.weight"):
        return "embeddings"
    if name.startswith("lm_head") or name.endswith("output.weight"):
        return "head"
    return None


@dataclass
class GroupGrid:
    """One module group of a checkpoint: its tensors, and the grid each lies on."""

    group: str
    tensors: int = 0
    parameters: int = 0
    found: Counter = field(default_factory=Counter)  # grid name (or "none") -> tensors on it
    ratios: dict[str, list[float]] = field(default_factory=dict)  # grid -> r of each tensor

    @property
    def grid(self) -> str:
        """"Q4_1", or a mix "Q4_K 9/18, Q6_K 9/18", or "none"."""
        if len(self.found) == 1:
            return next(iter(self.found))
        return ", ".join(f"{name} {n}/{self.tensors}" for name, n in self.found.most_common())

    def mean_ratio(self, grid: str) -> float | None:
        values = self.ratios.get(grid)
        return sum(values) / len(values) if values else None

    def to_dict(self) -> dict:
        return {"group": self.group, "tensors": self.tensors, "parameters": self.parameters, "grid": self.grid,
                "found": dict(self.found), "mean_ratio": {g: self.mean_ratio(g) for g in self.ratios}}


def inspect_weights(weights) -> list[GroupGrid]:
    """Per module group, the grids of ``weights``: an iterable of (checkpoint name, tensor) pairs."""
    groups: dict[str, GroupGrid] = {}
    for name, tensor in weights:
        group = module_group(name)
        if group is None or tensor.dim() != 2:
            continue
        found, ratios = grid_of(tensor)
        entry = groups.setdefault(group, GroupGrid(group))
        entry.tensors += 1
        entry.parameters += tensor.numel()
        entry.found[found or "none"] += 1
        for grid, r in ratios.items():
            entry.ratios.setdefault(grid, []).append(r)
    return list(groups.values())


def checkpoint_weights(folder: "str | Path"):
    """(name, tensor) of every tensor of a local safetensors model folder, one at a time."""

    for name, shard in tensor_shards(folder).items():
        yield name, read_tensor(shard, name)


def inspect_model(source: str, sampled: bool = False) -> list[GroupGrid]:
    """The grids of a model's checkpoint (a named model, a local folder), per module group; ``sampled``: the
    first, middle and last decoder block stand for all (what the compare header reads, in seconds)."""

    weights = checkpoint_weights(resolve_source(source))
    if sampled:
        names = list(_shard_names(resolve_source(source)))
        blocks = 1 + max((int(m["index"]) for n in names if (m := BLOCK.match(n))), default=-1)
        keep = {0, blocks // 2, blocks - 1}
        weights = ((n, t) for n, t in weights if not (m := BLOCK.match(n)) or int(m["index"]) in keep)
    return inspect_weights(weights)


def _shard_names(folder):

    return tensor_shards(folder).keys()


def baseline_grid_line(groups: list[GroupGrid]) -> str:
    """One line for the compare header: the grid of the block linears and of the embeddings/head."""
    linears = block_linear_grid(groups)
    if linears is None:
        mixed = Counter()
        for g in groups:
            if g.group not in ("embeddings", "head"):
                mixed.update(g.found)
        linears = ", ".join(f"{k} {v}/{sum(mixed.values())}" for k, v in mixed.most_common()) or "none"
    rest = ", ".join(f"{g.group} {g.grid}" for g in groups if g.group in ("embeddings", "head"))
    return f"baseline weights lie on: block linears {linears}; {rest or 'no embeddings read'} (edgekit inspect)"


def block_linear_grid(groups: list[GroupGrid]) -> str | None:
    """The one grid every block linear lies on (e.g. "Q4_1"), else None (none, or a mix)."""
    found = Counter()
    for g in groups:
        if g.group not in ("embeddings", "head"):
            found.update(g.found)
    return next(iter(found)) if len(found) == 1 and "none" not in found else None


def format_inspection(groups: list[GroupGrid]) -> str:
    """The table ``edgekit inspect`` prints: per group, tensors, parameters, the grid found and its r."""
    lines = [f"{'group':<12} {'tensors':>7} {'params':>12}  grid (r < {ON_GRID})    r on each grid (mean)"]
    for g in groups:
        shown = " ".join(f"{name}={g.mean_ratio(name):.3f}" for name in ("Q4_0", "Q4_1", "Q4_K", "g128-asym4",
                                                                             "Q5_0", "Q6_K", "Q8_0")
                         if g.mean_ratio(name) is not None)
        lines.append(f"{g.group:<12} {g.tensors:>7} {g.parameters:>12,}  {g.grid:<20} {shown}")
    return "\n".join(lines)
