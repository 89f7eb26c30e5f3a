"""What a ``prune-*`` variant name says: the pruning stage (method, amount), optional distillation and
quantization, parsed into one :class:`PruneSpec`; and how the pruned model is stored.
"""
from __future__ import annotations

from dataclasses import dataclass

from edgekit.core.errors import VariantError
from edgekit.quantizers.distill import DistillSettings
from edgekit.variants.registry import Variant

UNSTRUCTURED = ("magnitude", "wanda")


STRUCTURED = ("mlp", "heads", "depth")


CALIBRATION_OPTIONS = ("samples", "seq_len", "seed", "damp", "rule")


DISTILL_OPTIONS = tuple(f for f in DistillSettings.__dataclass_fields__ if f != "seed")


STAGE_PATTERN = (r"prune-(?P<method>magnitude|wanda|mlp|heads|depth)-"
          r"(?:(?P<percent>\d+(?:\.\d+)?)%|(?P<n>\d+)of(?P<m>\d+))")


SCHEME_PATTERN = r"(?:\+(?P<scheme>(?:(?:gptq|awq)-int[234]|int[2348])-g\d+))?"


# ---------------------------------------------------------------- the parsed variant
@dataclass(frozen=True)
class PruneSpec:
    method: str
    percent: float | None = None   # share of weights / channels / heads / layers removed
    n: int | None = None           # N:M: keep n of every m
    m: int | None = None
    distill: bool = False
    scheme: str | None = None

    @classmethod
    def of(cls, variant: "str | Variant") -> "PruneSpec":
        variant = Variant.parse(variant)
        spec = cls(variant.field("method"), variant.field("percent"), variant.field("n"), variant.field("m"),
                   "+distill" in variant.name, variant.field("scheme"))
        if spec.method is None:
            raise VariantError(f"{variant.name} is not a pruning variant; write prune-<method>-<amount>")
        if spec.n is not None:
            if spec.method not in UNSTRUCTURED:
                raise VariantError(f"{variant.name}: N:M patterns (e.g. 2of4) apply to magnitude or wanda; "
                                   f"{spec.method} prunes by a percentage, e.g. prune-{spec.method}-25%")
            if not 0 < spec.n < spec.m:
                raise VariantError(f"{variant.name}: keep n of every m with 0 < n < m, e.g. 2of4")
        elif not 0 < spec.percent < 100:
            raise VariantError(f"{variant.name}: the share removed must be above 0% and below 100%")
        return spec

    @property
    def structured(self) -> bool:
        return self.method in STRUCTURED

    @property
    def amount(self) -> str:
        return f"{self.n}of{self.m}" if self.n is not None else f"{self.percent:g}%"

    @property
    def stage(self) -> str:
        """The name without the quantization scheme: what the pruned (and distilled) checkpoint holds."""
        return f"prune-{self.method}-{self.amount}" + ("+distill" if self.distill else "")


def storage(variant: "str | Variant") -> str:
    """How ``variant``'s weights are stored, for tables that report bytes honestly: ``pruned shapes`` (structured:
    smaller matrices), ``dense zeros`` (unstructured and N:M: the zeros are stored, see the module docstring),
    ``dense`` (no pruning)."""
    if not Variant.parse(variant).name.startswith("prune-"):
        return "dense"
    return "pruned shapes" if PruneSpec.of(variant).structured else "dense zeros"
