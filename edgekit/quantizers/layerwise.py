"""Calibrate a model too big to load in fp32 one decoder layer at a time, from its memory-mapped shards.

GPTQ (Frantar et al. 2022, Section 4 and the reference code's ``llama_sequential``) and AWQ
(Lin et al. 2023) quantize a model layer by layer: only one decoder layer needs full precision
at a time, with the calibration activations it takes in and gives out. Here that recipe starts
from the checkpoint instead of a loaded model: the model is built on the ``meta`` device (no
memory, as :mod:`edgekit.models.checkpoint` builds it), the embeddings, final norm and head are
read from the shards in fp32, and the calibration driver
(:func:`edgekit.quantizers.calibration.quantize_blockwise`) reads each decoder layer's tensors in fp32 just
before its turn, calibrates and packs it, and runs it to make the next layer's inputs. At any
moment the process holds the quantized model built so far, one fp32 layer, the calibration
activations and the layer's calibration statistics (priced by :func:`edgekit.memory.peak.load_peak_bytes`).

The codes are the whole-model path's: the same driver sees the same fp32 weights and the same
activations, block for block. :func:`calibrated_model` chooses the path as the packed RTN load
does (:func:`edgekit.memory.peak.streamed_load`: the option ``low_memory``; by default a local checkpoint
on an accelerator, or over 1 GiB on a CPU).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from edgekit.core.errors import ModelSourceError
from edgekit.memory.guard import admit, guarded_fp32_load
from edgekit.memory.peak import streamed_load
from edgekit.models.checkpoint import meta_model, place_tensors, tensor_shards
from edgekit.models.layout import decoder_blocks, top_module
from edgekit.models.load import model_config
from edgekit.variants.registry import Variant

# quantize(model, load_block): quantizes ``model`` in place; ``load_block(block)`` (None when the model
# is already whole) materializes a decoder block just before its turn
Quantize = Callable[[nn.Module, "Callable[[str], None] | None"], object]


def calibrated_model(variant: "str | Variant", source: str, quantize: Quantize, device: str = "cpu") -> nn.Module:
    """The model of ``source`` quantized by ``quantize``: layer by layer from the shards where the plan
    streams (:func:`edgekit.memory.peak.streamed_load`), else on the fp32 model loaded whole. Admitted by the
    guard under ``variant`` either way, before a weight is read."""
    variant = Variant.parse(variant)
    if streamed_load(model_config(source), variant, torch.device(device).type):
        admit(variant, source, device)
        return layerwise_model(source, quantize, device)
    model = guarded_fp32_load(variant, source, device)
    quantize(model, None)
    return model


def layerwise_model(source: str, quantize: Quantize, device: str = "cpu") -> nn.Module:
    """Build ``source`` on the meta device, load all but its decoder blocks in fp32, and run
    ``quantize(model, load_block)``, which loads each block in fp32 just before its turn. Call it
    through :func:`calibrated_model` (the guard's admission)."""
    folder, config, model, _ = meta_model(source, torch.float32)
    locations = tensor_shards(folder)
    blocks = decoder_blocks(model)
    block_keys: dict[str, list[str]] = {}
    for key in locations:
        block_keys.setdefault(top_module(key) if top_module(key) in blocks else "", []).append(key)
    place_tensors(model, block_keys.pop("", []), locations, torch.float32, device)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    missing = [n for n, p in model.named_parameters() if p.device.type == "meta" and n not in locations]
    if missing:  # found before hours of calibration, not after
        raise ModelSourceError(f"{folder} lacks weights for {missing[:3]}...; the checkpoint does not match its "
                               f"config.json")
    quantize(model, lambda block: place_tensors(model, block_keys.pop(block, []), locations, torch.float32, device))
    return model.eval()
