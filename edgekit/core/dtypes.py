"""The one table of the dtypes edgekit holds weights, activations and KV caches in.

Short names (``fp32``, ``bf16``, ``fp16``) are what variants, options and the planner speak; each maps to
its torch dtype, its bytes per element and the name transformers' configs use (``torch_dtype``).
"""
from __future__ import annotations

import torch

from edgekit.core.errors import VariantError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_BYTES = {name: torch.empty((), dtype=dtype).element_size() for name, dtype in DTYPES.items()}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}  # torch.float32 -> "fp32"
TORCH_DTYPE_NAMES = {str(dtype).removeprefix("torch."): name for name, dtype in DTYPES.items()}  # "float32" -> "fp32"
# dense dtypes a model can be held in with accelerate's offload map (hooks move dense weights in and out)
OFFLOADABLE = tuple(DTYPES)


def config_dtype(config) -> str:
    """The checkpoint's dtype as fp32/bf16/fp16 (fp32 when the config does not say)."""
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    name = str(dtype).replace("torch.", "") if dtype is not None else "float32"
    return TORCH_DTYPE_NAMES.get(name, "fp32")


def dtype_name(name: str, option: str, where: object) -> str:
    """``name`` if it is one of the table's dtypes, else a one-line refusal naming the ``option`` of ``where``."""
    if name not in DTYPES:
        raise VariantError(f"{option}={name!r} in {where}; choose one of {', '.join(DTYPES)}")
    return name
