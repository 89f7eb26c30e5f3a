"""Mixed precision: the layers that hurt most when quantized stay at higher precision.

``mixed-<scheme>-kN`` keeps the N decoder linears that :mod:`edgekit.quantizers.sensitivity` ranks most
sensitive under ``<scheme>``'s bits (RTN ranking on the eval text, cached under the work folder)
at int8 (packed 8-bit; option ``high=fp16``), and quantizes the rest with ``<scheme>`` (RTN,
GPTQ or AWQ), block by block: layer by layer from the shards for a checkpoint over 1 GiB (or with
``low_memory=true``; :mod:`edgekit.quantizers.layerwise`), as the calibrated variants do. The ranking itself
scores the whole fp32 model and is guarded on its own (:func:`edgekit.quantizers.sensitivity.layer_sensitivity`).
The planner prices the exact per-layer mix with :func:`mixed_layer_schemes`.
"""
from __future__ import annotations

import torch
from torch import nn

from edgekit.core.errors import VariantError
from edgekit.memory.guard import admit
from edgekit.models.config import decoder_linears
from edgekit.models.layout import replace_module, split_block
from edgekit.quantizers.calibrated import CALIBRATION_DEFAULTS, apply_scheme
from edgekit.quantizers.layerwise import calibrated_model
from edgekit.quantizers.packed import PackedLinear, PackedRunner, held_in_fp32, packed_bytes
from edgekit.quantizers.sensitivity import ranking
from edgekit.variants.registry import Variant, device_of, register


class HalfLinear(nn.Module):
    """A linear layer kept at 16 bits (fp16 weight) inside a float32 model."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.register_buffer("weight", linear.weight.detach().half())
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))


def high_precision_layer(linear: nn.Linear, high: str, group_size: int) -> nn.Module:
    if high == "int8":
        return PackedLinear.from_linear(linear, 8, group_size)
    if high == "fp16":
        return HalfLinear(linear)
    raise VariantError(f"high={high!r}; choose int8 (packed 8-bit) or fp16 for the kept layers")


def mixed_layer_schemes(variant: "str | Variant", source: str = "default") -> dict[str, str]:
    """Per-layer variant names of a ``mixed-<scheme>-kN`` variant, as the planner counts them
    (layer names from the meta-device model: no weight is read for them)."""
    variant = Variant.parse(variant)
    scheme = Variant.parse(variant.field("scheme"))
    names = decoder_linears(source)
    kept = set(mixed_kept_layers(variant, source))
    high = variant.option("high")
    high_name = f"int8-g{scheme.group_size}" if high == "int8" else high
    return {n: high_name if n in kept else scheme.name for n in names}


def mixed_kept_layers(variant: Variant, source: str) -> list[str]:
    scheme = Variant.parse(variant.field("scheme"))
    rtn_scheme = f"int{scheme.bits}-g{scheme.group_size}"  # rank by RTN: the same bits, no calibration needed
    order = ranking(source, rtn_scheme, tokens=int(variant.option("rank_tokens")))
    k = variant.field("k")
    if k > len(order):
        raise VariantError(f"{variant.name} keeps {k} layers but the model has {len(order)} block linears")
    return order[:k]


def _base_scheme_bytes(variant: Variant, out_f: int, in_f: int, bias: bool, dense: str) -> int:
    """Without the layer list a mixed variant is priced as its base scheme (weight_bytes(layer_schemes=...)
    prices the exact mix)."""
    return packed_bytes(Variant.parse(variant.field("scheme")), out_f, in_f, bias, dense)


@register(r"mixed-(?P<scheme>(?:(?:gptq|awq)-)?int[234]-g\d+)-k(?P<k>\d+)", "pytorch",
          "the k most sensitive block linears at int8 (or option high=fp16), the rest at <scheme>",
          ("mixed-int4-g128-k4", "mixed-int3-g64-k6", "mixed-int2-g64-k8", "mixed-gptq-int3-g128-k4"),
          linear_bytes=_base_scheme_bytes, options=("high", "rank_tokens", *CALIBRATION_DEFAULTS),
          load="calibrated", dense=held_in_fp32, defaults={"high": "int8", "rank_tokens": 2048,
                                                           **CALIBRATION_DEFAULTS})
def build_mixed(variant: Variant, source: str, tokenizer):
    scheme = Variant.parse(variant.field("scheme"))
    device = device_of(variant)
    admit(variant, source, device)  # before the sensitivity ranking loads anything
    kept = mixed_kept_layers(variant, source)
    high = variant.option("high")

    def quantize(model, load_block):
        def load_and_keep(block):  # the kept layers change before their block is calibrated, as the rest run
            if load_block is not None:
                load_block(block)
            for name in kept:
                if split_block(name)[0] == block:
                    replace_module(model, name, high_precision_layer(model.get_submodule(name), high,
                                                                     scheme.group_size))
        apply_scheme(model, scheme, tokenizer, skip=frozenset(kept), calib_from=variant, load_block=load_and_keep)

    return PackedRunner(str(variant), calibrated_model(variant, source, quantize, device), tokenizer)
