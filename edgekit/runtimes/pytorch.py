"""PyTorch variants: the dense baselines, bitsandbytes (LLM.int8, NF4/FP4) and edgekit's packed RTN.

Each is one registry entry (:mod:`edgekit.registry`) with its planner pricing. Every load goes
through the load guard (:func:`edgekit.guard.guarded_load`), which refuses a load that cannot fit
before any weight is read. Byte layouts follow the quantizers: Dettmers et al. 2022, *LLM.int8()*
(int8 rows plus one fp32 scale per row); Dettmers et al. 2023, *QLoRA* (4-bit codes plus one
absmax per 64 weights, itself quantized to 8 bits under double quantization).
"""
from __future__ import annotations

import logging
import math

import torch
from transformers import BitsAndBytesConfig

from edgekit.errors import VariantError
from edgekit.guard import guarded_load, guarded_packed_load
from edgekit.loading import model_config
from edgekit.packed import KERNEL_GROUPS, packed_linear_bytes
from edgekit.plan import config_dtype
from edgekit.registry import DTYPE_BYTES, Variant, dense_linear_bytes, register
from edgekit.runners import TorchRunner

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def device_of(variant: Variant) -> str:
    return variant.option("device", "cuda" if torch.cuda.is_available() else "cpu")


def _compute_dtype(variant: Variant) -> str:
    """The option ``compute_dtype``, by default bf16 on CUDA and fp32 elsewhere; an unknown name is refused."""
    name = variant.option("compute_dtype", "bf16" if device_of(variant) == "cuda" else "fp32")
    if name not in DTYPES:
        raise VariantError(f"compute_dtype={name!r} in {variant}; choose one of {', '.join(DTYPES)}")
    return name


def torch_runner(variant: Variant, source: str, tokenizer, **kwargs) -> TorchRunner:
    """Load through the guard (the plan is checked first; offload=true / low_memory=true choose how)."""
    model = guarded_load(variant, source, device_of(variant), **kwargs)
    return TorchRunner(str(variant), model, tokenizer)


def held_in_fp32(variant: Variant, checkpoint: str) -> str:
    """Calibrated packed variants (GPTQ, AWQ, mixed, QAT) calibrate and hold the model in fp32:
    embeddings, norms and head stay fp32."""
    return "fp32"


def packed_bytes(variant: Variant, out_f: int, in_f: int, bias: bool, dense: str) -> int:
    """Any variant held as edgekit's PackedLinear (RTN, GPTQ, AWQ, QAT), in the layout it will hold:
    the fused int4 kernel's where one runs that shape (16-row blocks on the CPU, 8 on CUDA), else packed codes."""
    kernel = variant.bits == 4 and variant.group_size in KERNEL_GROUPS and out_f % 16 == 0
    return packed_linear_bytes(out_f, in_f, variant.bits, variant.group_size, bias, kernel)


@register(r"fp32|bf16|fp16", "pytorch", "unquantized baselines", ("fp32", "bf16", "fp16"),
          linear_bytes=lambda v, o, i, b, d: dense_linear_bytes(v.name)(v, o, i, b, d), load="as-is",
          dense=lambda variant, checkpoint: variant.name)
def build_dense(variant: Variant, source: str, tokenizer):
    return torch_runner(variant, source, tokenizer, dtype=DTYPES[variant.name])


def _int8_bytes(variant: Variant, out_f: int, in_f: int, bias: bool, dense: str) -> int:
    """LLM.int8: int8 rows plus one fp32 scale per row (SCB)."""
    return out_f * in_f + 4 * out_f + (out_f * DTYPE_BYTES[dense] if bias else 0)


def _4bit_bytes(variant: Variant, out_f: int, in_f: int, bias: bool, dense: str) -> int:
    """4-bit codes, an absmax per 64 weights (double quantization: uint8 absmax, an fp32 absmax
    per 256 of them and a 256-entry fp32 code book)."""
    n = out_f * in_f
    blocks = math.ceil(n / 64)
    absmax = blocks + 4 * math.ceil(blocks / 256) + 4 * 256 if variant.option("double_quant") else 4 * blocks
    return math.ceil(n / 2) + absmax + (out_f * DTYPE_BYTES[dense] if bias else 0)


class _DropMessage(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


_INT8_CAST_NOTICE = _DropMessage("MatMul8bitLt: inputs will be cast")


def _checkpoint_dtype(source: str) -> torch.dtype:
    """bitsandbytes leaves embeddings, norms and the head in the checkpoint's dtype, whichever way
    the model loads (quantize-on-load or ``from_pretrained``), as the planner prices them: holding
    them in fp32 instead put an int8 7B on CUDA 7.4% over its plan."""
    return DTYPES[config_dtype(model_config(source))]


@register(r"int8", "pytorch", "bitsandbytes LLM.int8 (option threshold=6.0)", ("int8",),
          linear_bytes=_int8_bytes, options=("threshold",), load="bitsandbytes")
def build_bnb_int8(variant: Variant, source: str, tokenizer):
    # LLM.int8 quantizes activations from fp16; bitsandbytes logs that cast on every matmul
    # of an fp32 model, thousands of times a run. It is expected, so that one message is dropped.
    logging.getLogger("bitsandbytes.autograd._functions").addFilter(_INT8_CAST_NOTICE)

    config = BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=float(variant.option("threshold", 6.0)))
    return torch_runner(variant, source, tokenizer, quantization_config=config, dtype=_checkpoint_dtype(source))


@register(r"(?P<quant_type>nf4|fp4)", "pytorch",
          "bitsandbytes 4-bit (options double_quant=false, compute_dtype=fp32|bf16|fp16)",
          ("nf4", "fp4", "nf4:double_quant=true"), linear_bytes=_4bit_bytes, options=("double_quant", "compute_dtype"),
          load="bitsandbytes")
def build_bnb_4bit(variant: Variant, source: str, tokenizer):
    compute = DTYPES[_compute_dtype(variant)]
    config = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type=variant.name,
        bnb_4bit_use_double_quant=bool(variant.option("double_quant", False)),
        bnb_4bit_compute_dtype=compute)
    return torch_runner(variant, source, tokenizer, quantization_config=config, dtype=_checkpoint_dtype(source))


def packed_rest_dtype(variant: Variant, checkpoint: str = "fp32") -> str:
    """What an RTN packed model holds unpacked (embeddings, norms, head) and computes in: option
    ``compute_dtype``, by default bf16 on CUDA (the int4 kernel's activations, as gpt-fast holds its
    models) and fp32 elsewhere."""
    return _compute_dtype(variant)


@register(r"int(?P<bits>[2348])-g(?P<group_size>\d+)", "pytorch",
          "group-wise RTN weight-only, real packed codes (edgekit.packed); packed while loading over 1 GiB "
          "(option compute_dtype=fp32|bf16|fp16)",
          ("int4-g32", "int4-g64", "int4-g128", "int3-g64", "int3-g128", "int2-g32", "int2-g64"),
          linear_bytes=packed_bytes, options=("compute_dtype",), load="packed", dense=packed_rest_dtype)
def build_packed(variant: Variant, source: str, tokenizer):
    dtype = DTYPES[packed_rest_dtype(variant)]
    return TorchRunner(str(variant), guarded_packed_load(variant, source, device_of(variant), dtype), tokenizer)
