"""PyTorch's dense baselines: ``fp32``, ``bf16`` and ``fp16``, loaded with ``from_pretrained`` through the guard.

The quantized PyTorch variants live with their methods in :mod:`edgekit.quantizers` (bitsandbytes, packed
RTN, GPTQ/AWQ, mixed, QAT, kquant) and :mod:`edgekit.pruning`; they all run in the same
:class:`edgekit.models.runner.TorchRunner`. Large models stream (:mod:`edgekit.runtimes.pytorch.streaming`).
"""
from __future__ import annotations

from edgekit.core.dtypes import DTYPES
from edgekit.memory.guard import torch_runner
from edgekit.variants.registry import Variant, dense_linear_bytes, register


@register(r"fp32|bf16|fp16", "pytorch", "unquantized baselines", ("fp32", "bf16", "fp16"),
          linear_bytes=lambda v, o, i, b, d: dense_linear_bytes(v.name)(v, o, i, b, d), load="as-is",
          dense=lambda variant, checkpoint: variant.name)
def build_dense(variant: Variant, source: str, tokenizer):
    return torch_runner(variant, source, tokenizer, dtype=DTYPES[variant.name])


