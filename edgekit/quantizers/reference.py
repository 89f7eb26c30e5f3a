"""A transparent reference quantizer for teaching: what quantization does to a weight matrix.

Nothing here is used to run a model fast (:mod:`edgekit.quantizers.packed` and bitsandbytes do that);
it is written so a learner can read every step and see its effect on real weights.

- **Integer round-to-nearest** (int8, int4, any b bits) with one scale per tensor, per
  output channel (row) or per group of ``group_size`` input columns. *Symmetric*:
  ``scale = max|w| / (2^(b-1) - 1)``, codes in ``[-(2^(b-1)-1), 2^(b-1)-1]``, zero is exactly
  zero. *Asymmetric*: ``scale = (max - min) / (2^b - 1)`` with an integer zero point, so a
  lopsided range wastes no levels (the min-max range always includes 0, as in
  :func:`edgekit.quantizers.packed.rtn_quantize`). Following Nagel et al., "A White Paper on Neural
  Network Quantization" (2021), sections 2.2-2.3.
- **NF4**: the 16 levels of the 4-bit NormalFloat code book of QLoRA (Dettmers et al.,
  "QLoRA: Efficient Finetuning of Quantized LLMs", 2023, appendix E; the same table as
  bitsandbytes), applied per block of ``block_size`` consecutive weights scaled by the
  block's absolute maximum: levels are quantiles of a normal distribution, so they sit
  densest where most weights are.
- **What it does**: reconstruction error (relative Frobenius error, SQNR in dB, max error),
  an error histogram, outliers (the share of weights beyond k standard deviations and the
  share of the squared error they cause), and the error of every decoder-block linear
  layer of a model under each scheme, plus the bits each scheme really stores a weight.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
import torch

from edgekit.core.errors import VariantError
from edgekit.core.progress import tqdm
from edgekit.models.layout import block_linears

# QLoRA's NF4 code book (Dettmers et al. 2023, appendix E), as bitsandbytes stores it.
NF4_LEVELS = torch.tensor([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0])

GRANULARITIES = ("tensor", "channel", "group")


@dataclass(frozen=True)
class Scheme:
    """One way to quantize a weight matrix.

    ``codebook="int"`` is round-to-nearest on a uniform grid of ``bits`` bits with one scale
    per ``granularity`` (``tensor``, ``channel`` or ``group`` of ``group_size`` input
    columns); ``codebook="nf4"`` is the NF4 code book per block of ``group_size`` weights.
    """

    bits: int = 8
    granularity: str = "channel"
    group_size: int = 128
    symmetric: bool = True
    codebook: str = "int"

    def __post_init__(self) -> None:
        if self.codebook not in ("int", "nf4"):
            raise VariantError(f"code book {self.codebook!r} is unknown; use 'int' or 'nf4'")
        if self.codebook == "nf4" and (self.bits != 4 or self.granularity != "group"):
            raise VariantError("nf4 is a 4-bit code book applied per block: use bits=4, granularity='group'")
        if self.granularity not in GRANULARITIES:
            raise VariantError(f"granularity {self.granularity!r} is unknown; use one of {', '.join(GRANULARITIES)}")
        if not 2 <= self.bits <= 8:
            raise VariantError(f"{self.bits} bits: the reference quantizer covers 2 to 8 bits")
        if self.group_size < 1:
            raise VariantError(f"group size {self.group_size} must be positive (e.g. 32, 64, 128)")

    @property
    def label(self) -> str:
        """A name kept apart from the runnable variants' (``sym-int4-b32`` here is not the registry's ``int4-g32``,
        which is asymmetric with a bf16 scale and zero a group): grid (sym/asym), bits, scope (b = block of
        columns)."""
        if self.codebook == "nf4":
            return f"nf4-b{self.group_size}"
        scope = {"tensor": "tensor", "channel": "channel"}.get(self.granularity, f"b{self.group_size}")
        return f"{'sym' if self.symmetric else 'asym'}-int{self.bits}-{scope}"

    def bits_per_weight(self, shape: tuple[int, int]) -> float:
        """Stored bits per weight: the codes plus each group's metadata (fp16 scale, 8-bit zero
        point when asymmetric; NF4 keeps an fp32 absmax per block, as bitsandbytes does)."""
        out_features, in_features = shape
        groups = {"tensor": 1, "channel": out_features,
                  "group": out_features * in_features / self.group_size}[self.granularity]
        meta = 32 if self.codebook == "nf4" else 16 + (0 if self.symmetric else 8)
        return self.bits + groups * meta / (out_features * in_features)


# The schemes notebook 01 lays side by side: scope first, then the code book.
TEACHING_SCHEMES = (
    Scheme(8, "tensor"), Scheme(8, "channel"),
    Scheme(4, "tensor"), Scheme(4, "channel"), Scheme(4, "group", 128), Scheme(4, "group", 32),
    Scheme(4, "group", 32, symmetric=False), Scheme(4, "group", 64, codebook="nf4"),
)


def _grouped(weight: torch.Tensor, scheme: Scheme) -> torch.Tensor:
    """View ``weight`` [out, in] as [rows, groups, group] so that one scale serves each last-axis slice."""
    if weight.dim() != 2:
        raise VariantError(f"expected a 2-D weight matrix, got shape {tuple(weight.shape)}")
    out_features, in_features = weight.shape
    w = weight.detach().float()
    if scheme.granularity == "tensor":
        return w.reshape(1, 1, -1)
    if scheme.granularity == "channel":
        return w.reshape(out_features, 1, in_features)
    if in_features % scheme.group_size:
        raise VariantError(f"a layer has {in_features} input features, which group size {scheme.group_size} "
                           "does not divide; pick a group size that divides the layer width")
    return w.reshape(out_features, in_features // scheme.group_size, scheme.group_size)


def quantize_int(weight: torch.Tensor, scheme: Scheme) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round-to-nearest integer codes: returns ``codes`` (int32, grouped shape), ``scale`` and
    ``zero`` (one per group, broadcastable); ``(codes - zero) * scale`` is the reconstruction."""
    w = _grouped(weight, scheme)
    if scheme.symmetric:
        qmax = 2 ** (scheme.bits - 1) - 1
        scale = (w.abs().amax(-1, keepdim=True) / qmax).clamp(min=1e-12)
        zero = torch.zeros_like(scale)
        codes = torch.clamp(torch.round(w / scale), -qmax, qmax)
    else:
        qmax = 2 ** scheme.bits - 1
        wmin = w.amin(-1, keepdim=True).clamp(max=0)
        wmax = w.amax(-1, keepdim=True).clamp(min=0)
        scale = ((wmax - wmin) / qmax).clamp(min=1e-12)
        zero = torch.round(-wmin / scale)
        codes = torch.clamp(torch.round(w / scale) + zero, 0, qmax)
    return codes.to(torch.int32), scale, zero


def quantize_nf4(weight: torch.Tensor, block_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """NF4 codes (indices into :data:`NF4_LEVELS`) per block of ``block_size`` consecutive
    weights (row-major), and each block's absmax; ``NF4_LEVELS[codes] * absmax`` reconstructs."""
    flat = weight.detach().float().reshape(-1)
    if flat.numel() % block_size:
        raise VariantError(f"{flat.numel()} weights do not split into blocks of {block_size}; pick a block size "
                           "that divides the number of weights")
    blocks = flat.reshape(-1, block_size)
    absmax = blocks.abs().amax(-1, keepdim=True).clamp(min=1e-12)
    normalized = blocks / absmax
    # nearest level: the levels are sorted, so compare against the midpoints between them
    midpoints = (NF4_LEVELS[1:] + NF4_LEVELS[:-1]) / 2
    codes = torch.bucketize(normalized, midpoints)
    return codes, absmax


def group_grid(weight: torch.Tensor, scheme: Scheme) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values, levels)``: the weights that share one scale with the tensor's largest |weight| (the whole
    tensor, its row, or its group / NF4 block) and every value that scale lets them take."""
    if scheme.codebook == "nf4":
        flat = weight.detach().float().reshape(-1)
        codes, absmax = quantize_nf4(weight, scheme.group_size)
        block = int(flat.abs().argmax()) // scheme.group_size
        return flat.reshape(-1, scheme.group_size)[block], NF4_LEVELS * absmax[block]
    w = _grouped(weight, scheme)
    _, scale, zero = quantize_int(weight, scheme)
    row, group = divmod(int(w.abs().reshape(-1, w.shape[-1]).amax(-1).argmax()), w.shape[1])
    qmax = 2 ** (scheme.bits - 1) - 1 if scheme.symmetric else 2 ** scheme.bits - 1
    codes = torch.arange(-qmax, qmax + 1) if scheme.symmetric else torch.arange(0, qmax + 1)
    return w[row, group], (codes.float() - zero[row, group]) * scale[row, group]


def fake_quantize(weight: torch.Tensor, scheme: Scheme) -> torch.Tensor:
    """Quantize then dequantize ``weight`` under ``scheme``: the matrix the model would really use."""
    if scheme.codebook == "nf4":
        codes, absmax = quantize_nf4(weight, scheme.group_size)
        return (NF4_LEVELS[codes] * absmax).reshape(weight.shape)
    codes, scale, zero = quantize_int(weight, scheme)
    return ((codes.float() - zero) * scale).reshape(weight.shape)


def quantization_error(weight: torch.Tensor, dequantized: torch.Tensor) -> dict:
    """How far ``dequantized`` is from ``weight``: relative Frobenius error, SQNR, RMSE and max error."""
    w = weight.detach().float()
    err = dequantized.float() - w
    signal, noise = float((w ** 2).sum()), float((err ** 2).sum())
    return {"relative_error": math.sqrt(noise / signal) if signal else float("nan"),
            "sqnr_db": 10 * math.log10(signal / noise) if noise else float("inf"),
            "rmse": math.sqrt(noise / w.numel()), "max_abs_error": float(err.abs().max())}


def error_histogram(weight: torch.Tensor, dequantized: torch.Tensor, bins: int = 81,
                    limit: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Histogram of the elementwise error ``dequantized - weight``: ``(counts, bin_edges)``;
    ``limit`` fixes the range to ±limit so several schemes share one axis."""
    err = (dequantized.float() - weight.detach().float()).reshape(-1)
    limit = float(limit if limit is not None else err.abs().max().clamp(min=1e-12))
    counts = torch.histc(err, bins=bins, min=-limit, max=limit)
    return counts, torch.linspace(-limit, limit, bins + 1)


def outlier_report(weight: torch.Tensor, dequantized: torch.Tensor, k: float = 3.0) -> dict:
    """Outliers: weights beyond ``k`` standard deviations from the mean, how many there are,
    how large the largest is (in σ) and what share of the squared error they cause."""
    w = weight.detach().float()
    sigma = float(w.std())
    mask = (w - w.mean()).abs() > k * sigma
    sq_err = (dequantized.float() - w) ** 2
    total = float(sq_err.sum())
    return {"k_sigma": k, "outlier_share": float(mask.float().mean()),
            "largest_in_sigma": float((w - w.mean()).abs().max()) / sigma if sigma else float("nan"),
            "outlier_error_share": float(sq_err[mask].sum()) / total if total else 0.0,
            "gaussian_share": math.erfc(k / math.sqrt(2))}


def scheme_table(weight: torch.Tensor, schemes=TEACHING_SCHEMES, k: float = 3.0) -> pd.DataFrame:
    """One weight matrix under each scheme: bits really stored per weight, error and outlier share of error."""
    rows = []
    for scheme in schemes:
        deq = fake_quantize(weight, scheme)
        outliers = outlier_report(weight, deq, k)
        rows.append({"scheme": scheme.label, "bits_per_weight": scheme.bits_per_weight(tuple(weight.shape)),
                     **quantization_error(weight, deq), "outlier_error_share": outliers["outlier_error_share"]})
    return pd.DataFrame(rows)


def layer_errors(model: torch.nn.Module, schemes=TEACHING_SCHEMES, progress: bool = True) -> pd.DataFrame:
    """Every decoder-block linear layer of ``model`` under every scheme: one row per (layer, scheme)
    with the layer's index in the stack, its kind (``q_proj``, ``down_proj``...) and its errors."""

    rows = []
    for name, linear in tqdm(block_linears(model).items(), desc="layers", disable=not progress, leave=False):
        weight = linear.weight.detach()
        parts = name.split(".")
        index = next((int(p) for p in parts if p.isdigit()), -1)
        stats = outlier_report(weight, weight)
        for scheme in schemes:
            deq = fake_quantize(weight, scheme)
            rows.append({"layer": name, "block": index, "kind": parts[-1], "scheme": scheme.label,
                         "largest_in_sigma": stats["largest_in_sigma"], **quantization_error(weight, deq)})
    return pd.DataFrame(rows)
