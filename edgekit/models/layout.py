"""Where the decoder blocks are: the one definition every quantizer, the planner and streaming use.

A decoder block is a module named ``<prefix>.layers.<i>`` (Llama, Mistral, Qwen, Gemma...) or
``<prefix>.h.<i>`` (GPT-2 style). Its linear layers (attention and MLP projections) are what every
PyTorch scheme quantizes; embeddings and the LM head stay at full precision, as bitsandbytes leaves
them too, so every scheme quantizes the same set of weights.
"""
from __future__ import annotations

import re

from torch import nn

from edgekit.core.errors import VariantError

BLOCK = re.compile(r"^(?P<block>(?:.*\.)?(?:layers|h)\.(?P<index>\d+))(?:\.(?P<module>.+))?$")


def block_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """The linear layers inside the decoder blocks, by name, in module order."""
    layers = {name: module for name, module in model.named_modules()
              if isinstance(module, nn.Linear) and BLOCK.match(name)}
    if not layers:
        raise VariantError("found no linear layers inside decoder blocks (model.layers.* or transformer.h.*); "
                           "this architecture is not supported by group-wise quantization")
    return layers


def split_block(name: str) -> tuple[str, str]:
    """``model.layers.3.self_attn.q_proj`` -> (``model.layers.3``, ``self_attn.q_proj``)."""
    match = BLOCK.match(name)
    if not match or not match["module"]:
        raise VariantError(f"{name} is not inside a decoder block")
    return match["block"], match["module"]


def blocks_in_order(model: nn.Module) -> dict[str, list[str]]:
    """Block name -> the names of its linear layers, in forward order."""
    blocks: dict[str, list[str]] = {}
    for name in block_linears(model):
        blocks.setdefault(split_block(name)[0], []).append(name)
    return blocks


def top_module(param_name: str) -> str:
    """``model.layers.3.mlp.up_proj.weight`` -> ``model.layers.3``; ``lm_head.weight`` -> ``lm_head``."""
    match = BLOCK.match(param_name)
    return match["block"] if match and match["module"] else param_name.rsplit(".", 1)[0]


def block_index(module_name: str) -> int | None:
    """``model.layers.3`` (or anything inside it) -> 3; None outside the decoder blocks."""
    match = BLOCK.match(module_name)
    return int(match["index"]) if match else None


def decoder_blocks(model: nn.Module) -> dict[str, nn.Module]:
    """The decoder blocks themselves (``model.layers.3`` -> its module), in order."""
    return {name: module for name, module in model.named_modules()
            if (match := BLOCK.match(name)) and not match["module"]}


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` where the module named ``name`` (dotted, as ``named_modules`` gives it) sits in ``model``."""
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def llama_layers(model: nn.Module, refusal: str) -> nn.ModuleList:
    """The decoder layers of a Llama-style model (``model.layers.*`` with ``self_attn.q/k/v/o_proj`` and
    ``mlp.gate/up/down_proj``), for the methods that rewrite those projections; else ``refusal`` as a
    :class:`VariantError` (say what to use instead)."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    ok = isinstance(layers, nn.ModuleList) and all(
        hasattr(layer, "self_attn") and hasattr(layer, "mlp")
        and all(hasattr(layer.self_attn, p) for p in ("q_proj", "k_proj", "v_proj", "o_proj"))
        and all(hasattr(layer.mlp, p) for p in ("gate_proj", "up_proj", "down_proj")) for layer in layers)
    if not ok:
        raise VariantError(refusal)
    return layers
