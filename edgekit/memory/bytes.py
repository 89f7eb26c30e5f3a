"""Bytes from a config alone: weights under a variant (each registry entry prices its linears; the rest at
the dtype the entry leaves unquantized; an entry whose runtime writes its own graph prices that graph, which
can store more than the model's parameters), the KV cache (dense or llama.cpp block types, from gguf's own table)
and one forward pass's activations.
"""
from __future__ import annotations

import re

from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from edgekit.core.dtypes import DTYPE_BYTES, config_dtype
from edgekit.core.errors import PlanError, VariantError
from edgekit.models.config import config_layout, load_config
from edgekit.models.layout import top_module
from edgekit.variants.registry import Variant


def linear_bytes(out_f: int, in_f: int, bias: bool, scheme: "str | Variant", dense: str) -> int:
    """Bytes one ``out_f x in_f`` linear layer occupies under ``scheme`` (its registry entry prices
    it); ``dense`` is the dtype (fp32/bf16/fp16) of what the scheme leaves unquantized (biases)."""
    variant = Variant.parse(scheme)
    return variant.entry.linear_bytes(variant, out_f, in_f, bias, dense)


def dense_dtype(config, variant: "str | Variant") -> str:
    """Dtype of what stays unquantized, as the variant's registry entry says (given the checkpoint's)."""
    variant = Variant.parse(variant)
    return variant.entry.dense(variant, config_dtype(config))


def held_config(config, variant: "str | Variant"):
    """The config of the model as ``variant`` holds it: its registry entry's ``held_config`` where the
    variant changes shapes (structured pruning removes channels, KV groups, layers), else ``config``."""
    config, variant = load_config(config), Variant.parse(variant)
    return variant.entry.held_config(variant, config) if variant.entry.held_config else config


def module_bytes(config, variant: str, layer_schemes: dict[str, str] | None = None) -> dict[str, int]:
    """Weight bytes per top-level module in load order (embeddings, each decoder block, norm, head),
    at the shapes the variant holds (:func:`held_config`); a variant whose runtime writes its own graph
    prices that graph (its registry entry's ``graph_bytes``: tensors the model's parameters do not list)."""
    config = held_config(config, variant)
    variant = Variant.parse(variant)
    if variant.entry.graph_bytes:
        if layer_schemes:
            raise VariantError(f"{variant.name} writes every linear alike; layer_schemes cannot mix schemes in it")
        sizes = variant.entry.graph_bytes(variant, config)
    else:
        sizes = _parameter_bytes(config, variant, layer_schemes)
    order = lambda key: (0 if "embed" in key or key.endswith("wte") else 2 if not re.search(r"\.\d+$", key) else 1,
                         int(key.rsplit(".", 1)[-1]) if re.search(r"\.\d+$", key) else 0, "head" in key)
    return dict(sorted(sizes.items(), key=lambda kv: order(kv[0])))


def _parameter_bytes(config, variant: Variant, layer_schemes: dict[str, str] | None) -> dict[str, int]:
    """Weight bytes per top-level module of the model's own parameters: each linear as its scheme holds it
    (``layer_schemes`` or the variant's), the rest at the variant's dense dtype or its ``table_bytes``."""
    _, linears, others = config_layout(config)
    dense = dense_dtype(config, variant)
    layer_schemes = dict(layer_schemes or {})
    unknown = set(layer_schemes) - {name for name, *_ in linears}
    if unknown:
        raise VariantError(f"layer_schemes names layers this model does not have: {sorted(unknown)[:3]}; "
                           f"names look like {linears[0][0]}")
    sizes: dict[str, int] = {}
    table_bytes, width = variant.entry.table_bytes, getattr(config, "hidden_size", 0)
    for top, numel in others:
        table = ("embed" in top or top.endswith("wte") or "head" in top) and width and numel % width == 0
        held = (table_bytes(variant, numel // width, width, dense) if table and table_bytes
                else numel * DTYPE_BYTES[dense])
        sizes[top] = sizes.get(top, 0) + held
    for name, out_f, in_f, bias in linears:
        top = top_module(name + ".weight")
        sizes[top] = sizes.get(top, 0) + linear_bytes(out_f, in_f, bias, layer_schemes.get(name, variant), dense)
    return sizes


def weight_bytes(config, variant: str, layer_schemes: dict[str, str] | None = None) -> int:
    """Bytes of the weights of ``config`` under ``variant``; ``layer_schemes`` maps decoder
    linear layers (``model.layers.3.mlp.down_proj``) to the variant they use instead."""
    return sum(module_bytes(config, variant, layer_schemes).values())


def activation_dtype(config, variant: "str | Variant") -> str:
    """Dtype of activations and of the KV cache: the variant's compute dtype, as its registry entry says
    (given the checkpoint's); it differs from the unquantized weights' dtype for bitsandbytes."""
    variant = Variant.parse(variant)
    return variant.entry.compute(variant, config_dtype(config))


def kv_cache_bytes(config, context: int, batch: int = 1, dtype: str = "fp16") -> int:
    """Keys and values of every layer for ``batch`` sequences of ``context`` tokens (a sliding-window layer's
    at most its window less one, as transformers holds them: Gemma 3's five local layers to one global one).

    ``dtype`` is fp32/bf16/fp16 or a llama.cpp cache type (``f16``, ``q8_0``, ``q4_0``...: its
    ``type_k``/``type_v``), priced by gguf's own table of block sizes: a row of one head's values is
    cut into blocks (q8_0: 32 int8 codes and an fp16 scale, 34 bytes; q4_0: 32 4-bit codes and a
    scale, 18 bytes), so the head dimension must be a multiple of the block."""
    config = load_config(config)
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    rows = 2 * config.num_hidden_layers * kv_heads * context * batch
    if dtype in DTYPE_BYTES:  # transformers' cache keeps a sliding-window layer's last ``sliding_window - 1``
                              # positions
        window = getattr(config, "sliding_window", None)
        kinds = getattr(config, "layer_types", None) or ()
        positions = sum(min(context, window - 1) if kind == "sliding_attention" and window else context
                        for kind in kinds)
        if kinds:
            rows = 2 * kv_heads * positions * batch
        return rows * head_dim * DTYPE_BYTES[dtype]

    try:
        block, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType[dtype.upper()]]
    except KeyError:
        raise PlanError(f"unknown KV cache type {dtype!r}; use {', '.join(DTYPE_BYTES)} or a llama.cpp cache "
                        "type such as f16, q8_0, q4_0") from None
    if head_dim % block:
        raise PlanError(f"a {dtype} KV cache stores blocks of {block} values, and this model's heads have "
                        f"{head_dim}; use f16 or a type whose block divides {head_dim}")
    return rows * head_dim // block * block_bytes


def kv_cache_dtype(config, variant: "str | Variant") -> str:
    """What the KV cache is held in under ``variant``: its option ``kv`` (gguf-q4_0:kv=q8_0), else the
    variant's compute dtype."""
    variant = Variant.parse(variant)
    return variant.option("kv") or activation_dtype(config, variant)


def activation_bytes(config, context: int, batch: int = 1, dtype: str = "fp16") -> int:
    """Working set of one forward pass over ``context`` tokens (the prompt, the worst case).

    Per token: the residual stream, norm output and attention output (4 x hidden), q/k/v,
    the MLP's gate, up and product (3 x intermediate), one layer's attention scores
    (heads x context, as the math SDPA path on a CPU materializes them), plus fp32 logits
    over the vocabulary for every position. Layers run one after another, so one layer's
    intermediates are live at a time.
    """
    config = load_config(config)
    h, heads = config.hidden_size, config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or h // heads
    kv = 2 * (getattr(config, "num_key_value_heads", None) or heads) * head_dim
    intermediate = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * h
    per_token = 4 * h + heads * head_dim + kv + 3 * intermediate + heads * context
    return batch * context * (per_token * DTYPE_BYTES[dtype] + 4 * config.vocab_size)
