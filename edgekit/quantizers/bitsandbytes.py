"""bitsandbytes quantization: LLM.int8 (``int8``) and 4-bit NF4/FP4 (``nf4``, ``fp4``), their pricing and loading.

Byte layouts follow the quantizers: Dettmers et al. 2022, *LLM.int8()* (int8 rows plus one fp32 scale per
row); Dettmers et al. 2023, *QLoRA* (4-bit codes plus one absmax per 64 weights, itself quantized to 8 bits
under double quantization). Large checkpoints quantize while loading (:func:`load_bnb_quantized`): each
decoder linear becomes ``bnb.nn.Linear4bit`` / ``Linear8bitLt`` (the modules transformers uses) on the meta
device, and each weight is quantized straight into its ``Params4bit`` / ``Int8Params`` as it is read, exactly
the quantization ``from_pretrained`` applies.
"""
from __future__ import annotations

import logging
import math

import bitsandbytes as bnb
import torch
from transformers import BitsAndBytesConfig

from edgekit.core.dtypes import DTYPE_BYTES, DTYPES, config_dtype
from edgekit.core.errors import VariantError
from edgekit.memory.guard import admit, torch_runner
from edgekit.memory.peak import streamed_load
from edgekit.models.checkpoint import meta_model, stream_into
from edgekit.models.layout import block_linears, replace_module
from edgekit.models.load import model_config
from edgekit.models.runner import TorchRunner
from edgekit.variants.registry import Variant, checkpoint_dtype, compute_dtype, device_of, register


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


def _bnb_compute(variant: Variant, checkpoint: str) -> str:
    """What bitsandbytes computes in (activations, KV cache): the one compute_dtype rule, not the checkpoint's."""
    return compute_dtype(variant)


def _bnb_runner(variant: Variant, source: str, tokenizer, config: BitsAndBytesConfig) -> TorchRunner:
    """Admitted by the guard, then loaded: quantized tensor by tensor while reading where
    :func:`edgekit.memory.peak.streamed_load` says (on an accelerator, on a CPU over 1 GiB, or with
    ``low_memory=true``), else through ``from_pretrained``. bitsandbytes leaves embeddings, norms and the head
    in the checkpoint's dtype either way, as the planner prices them (holding them in fp32 instead put an int8
    7B on CUDA 7.4% over its plan)."""
    device, model_cfg = device_of(variant), model_config(source)
    if streamed_load(model_cfg, variant, torch.device(device).type):
        admit(variant, source, device)
        return TorchRunner(str(variant), load_bnb_quantized(source, config, device), tokenizer)
    return torch_runner(variant, source, tokenizer, quantization_config=config, dtype=DTYPES[config_dtype(model_cfg)])


@register(r"int8", "pytorch", "bitsandbytes LLM.int8 (option threshold=6.0)", ("int8",),
          linear_bytes=_int8_bytes, options=("threshold",), load="bitsandbytes", dense=checkpoint_dtype,
          compute=_bnb_compute)
def build_bnb_int8(variant: Variant, source: str, tokenizer):
    # LLM.int8 quantizes activations from fp16; bitsandbytes logs that cast on every matmul
    # of an fp32 model, thousands of times a run. It is expected, so that one message is dropped.
    logging.getLogger("bitsandbytes.autograd._functions").addFilter(_INT8_CAST_NOTICE)

    config = BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=float(variant.option("threshold", 6.0)))
    return _bnb_runner(variant, source, tokenizer, config)


@register(r"(?P<quant_type>nf4|fp4)", "pytorch",
          "bitsandbytes 4-bit (options double_quant=false, compute_dtype=fp32|bf16|fp16)",
          ("nf4", "fp4", "nf4:double_quant=true"), linear_bytes=_4bit_bytes, options=("double_quant", "compute_dtype"),
          load="bitsandbytes", dense=checkpoint_dtype, compute=_bnb_compute)
def build_bnb_4bit(variant: Variant, source: str, tokenizer):
    compute = DTYPES[compute_dtype(variant)]
    config = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type=variant.name,
        bnb_4bit_use_double_quant=bool(variant.option("double_quant", False)),
        bnb_4bit_compute_dtype=compute)
    return _bnb_runner(variant, source, tokenizer, config)




def load_bnb_quantized(source: str, quantization_config, device: str = "cpu"):
    """Load ``source`` (a local folder or "default") with a ``BitsAndBytesConfig``, quantizing
    each decoder linear weight as it is read. Returns the model in eval mode."""
    four_bit = bool(quantization_config.load_in_4bit)
    if not four_bit and not quantization_config.load_in_8bit:
        raise VariantError("quantize-on-load needs a 4-bit or 8-bit BitsAndBytesConfig")
    folder, config, model, dtype = meta_model(source)
    quantized = {}
    for name, linear in block_linears(model).items():
        if four_bit:
            layer = bnb.nn.Linear4bit(linear.in_features, linear.out_features, linear.bias is not None,
                                      compute_dtype=quantization_config.bnb_4bit_compute_dtype,
                                      compress_statistics=quantization_config.bnb_4bit_use_double_quant,
                                      quant_type=quantization_config.bnb_4bit_quant_type, device="meta")
        else:
            layer = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, linear.bias is not None,
                                        has_fp16_weights=False, threshold=quantization_config.llm_int8_threshold,
                                        device="meta")
        replace_module(model, name, layer)
        quantized[name] = layer

    def on_weight(name: str, value: torch.Tensor, bias: torch.Tensor | None) -> None:
        layer = quantized[name]
        layer.weight = _quantized_weight(layer, value, quantization_config, device)
        if bias is not None:
            layer.bias = torch.nn.Parameter(bias.to(dtype), requires_grad=False)
    return stream_into(model, folder, config, dtype, set(quantized), on_weight, device, "quantize-on-load")


def _quantized_weight(layer, value: torch.Tensor, quantization_config, device: str):
    """One full-precision weight -> its bitsandbytes parameter (quantized on ``.to(device)``)."""
    if quantization_config.load_in_4bit:
        param = bnb.nn.Params4bit(value, requires_grad=False, blocksize=64,
                                  compress_statistics=quantization_config.bnb_4bit_use_double_quant,
                                  quant_type=quantization_config.bnb_4bit_quant_type, module=layer)
        return param.to(device)
    return bnb.nn.Int8Params(value, requires_grad=False, has_fp16_weights=False).to(device)
