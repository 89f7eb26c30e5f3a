"""A short quantization-aware fine-tune (QAT) at a low bit width, exported as packed weights.

Where post-training quantization loses too much (2-bit), the guide's next step is QAT:
train with the quantizer in the forward pass so the weights learn to sit where rounding
hurts least. Each decoder-block linear gets a fake-quantized weight — the exact RTN round
trip :class:`~edgekit.quantizers.packed.PackedLinear` will store (min-max groups, fp16 scales) — and a
straight-through estimator (Bengio et al. 2013, "Estimating or Propagating Gradients
Through Stochastic Neurons"; Jacob et al. 2018) passes the gradient to the fp32 weight as
if rounding were the identity. The loss is distillation from the fp32 model
(KL(teacher || student) of next-token distributions, as LLM-QAT, Liu et al. 2023, does),
on windows of the train split, so it targets exactly the KL that edgekit measures on the
eval split (the loop, :func:`edgekit.quantizers.distill.kl_distill`, is shared with pruning recovery).
Only the block linears and norms train; embeddings and the LM head stay frozen.

The run is seeded and short; :func:`qat_finetune` records KL and Δppl against fp32 on an
eval slice as training goes (with the training seconds spent), and :func:`qat_checkpoint`
saves the tuned weights under the work folder, where the ``qat-intB-gG`` variant loads and
packs them like any RTN variant.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F

from edgekit.core.paths import bos_token_id, cache_key, work_dir
from edgekit.memory.guard import admit, guarded_fp32_load, guarded_load
from edgekit.models.layout import block_linears, replace_module, split_block
from edgekit.models.load import load_model, load_tokenizer, model_key, resolve_source
from edgekit.quantizers.calibrated import rtn_dequantized
from edgekit.quantizers.distill import DistillSettings, kl_distill
from edgekit.quantizers.packed import PackedRunner, check_group, held_in_fp32, packed_bytes, quantize_rtn
from edgekit.variants.registry import Variant, device_of, register


@dataclass(frozen=True)
class QATSettings(DistillSettings):
    """The distillation loop's settings (:class:`edgekit.quantizers.distill.DistillSettings`) plus the grid it trains
    for."""

    bits: int = 2
    group_size: int = 64
    steps: int = 120
    # A step of a 2-bit grid is large, so QAT moves few codes and mostly retunes the norms and the
    # weights near a rounding boundary; too high a rate undoes the pre-training. Measured on the
    # shipped model (int2-g64, KL on 512 eval tokens, from 0.210): 2e-4 -> 0.161 after 32 steps of 8,
    # 5e-4 -> 0.218 after 16 steps of 4, 2e-3 -> 0.689.
    lr: float = 2e-4
    eval_every: int = 40


class _RoundTrip(torch.autograd.Function):
    """RTN quantize-dequantize forward, identity backward: the straight-through estimator."""

    @staticmethod
    def forward(ctx, weight, bits, group_size):
        return rtn_dequantized(weight, bits, group_size)

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None


class FakeQuantLinear(nn.Module):
    """A linear layer whose forward sees its weight after the packed RTN round trip."""

    def __init__(self, linear: nn.Linear, bits: int, group_size: int) -> None:
        super().__init__()
        check_group(linear.in_features, group_size)
        self.linear, self.bits, self.group_size = linear, bits, group_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, _RoundTrip.apply(self.linear.weight, self.bits, self.group_size), self.linear.bias)


def qat_finetune(model: str = "default", settings: QATSettings = QATSettings(), tokenizer=None,
                 progress: bool = True) -> tuple[nn.Module, pd.DataFrame]:
    """Fine-tune a copy of the model with fake quantization; returns the fp32 model (weights
    ready for RTN packing) and the history: step, training seconds, KL (± se) and Δppl vs fp32."""
    source = resolve_source(model)
    tokenizer = tokenizer or load_tokenizer(source)
    torch.manual_seed(settings.seed)
    job = f"qat-int{settings.bits}-g{settings.group_size}"
    teacher = guarded_fp32_load(job, source, what="fine-tune")  # priced as the whole training run
    student = load_model(source, dtype=torch.float32)
    for p in teacher.parameters():
        p.requires_grad_(False)
    for p in student.parameters():
        p.requires_grad_(False)
    names = list(block_linears(student))
    blocks = {split_block(n)[0] for n in names}
    for name in names:
        replace_module(student, name, FakeQuantLinear(student.get_submodule(name), settings.bits, settings.group_size))
    trainable = [p for n, p in student.named_parameters() if any(n.startswith(b + ".") for b in blocks)]
    for p in trainable:
        p.requires_grad_(True)
    history = kl_distill(teacher, student, trainable, tokenizer, settings,
                         desc=f"QAT int{settings.bits}-g{settings.group_size}", progress=progress)
    for name in names:  # back to plain linears holding the tuned fp32 weights
        replace_module(student, name, student.get_submodule(name).linear)
    for p in student.parameters():
        p.requires_grad_(False)
    return student.eval(), history


def _checkpoint_dir(source: str, settings: QATSettings) -> Path:
    key = cache_key(model_key(source), asdict(settings), bos_token_id(load_tokenizer(source)))  # windows' BOS rule
    return work_dir() / "qat" / key


def qat_checkpoint(model: str, settings: QATSettings = QATSettings(), tokenizer=None, progress: bool = True) -> Path:
    """The folder of the QAT-tuned weights for ``model`` and ``settings``, training them on first use."""
    source = resolve_source(model)
    folder = _checkpoint_dir(source, settings)
    if (folder / "qat_history.json").exists():
        return folder
    tokenizer = tokenizer or load_tokenizer(source)
    tuned, history = qat_finetune(source, settings, tokenizer, progress)
    tuned.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    (folder / "qat_history.json").write_text(json.dumps({"source": source, "settings": asdict(settings),
                                                          "history": history.to_dict("records")}, indent=1))
    return folder


def qat_history(model: str, settings: QATSettings = QATSettings()) -> pd.DataFrame:
    """The recorded training history of a saved QAT checkpoint."""
    folder = qat_checkpoint(model, settings)
    return pd.DataFrame(json.loads((folder / "qat_history.json").read_text())["history"])


@register(r"qat-int(?P<bits>[234])-g(?P<group_size>\d+)", "pytorch",
          "RTN-packed weights of a short seeded quantization-aware fine-tune (options steps=, seed=, lr=)",
          ("qat-int2-g64", "qat-int3-g128"), linear_bytes=packed_bytes, load="training", dense=held_in_fp32,
          options=tuple(f for f in QATSettings.__dataclass_fields__ if f not in ("bits", "group_size")))
def build_qat(variant: Variant, source: str, tokenizer):
    admit(variant, source, device_of(variant), what="fine-tune")
    settings = QATSettings(bits=variant.bits, group_size=variant.group_size,
                           **{k: v for k, v in variant.options if k in QATSettings.__dataclass_fields__})
    folder = qat_checkpoint(source, settings, tokenizer)
    model = guarded_load(Variant.parse("fp32"), str(folder), device_of(variant), dtype=torch.float32)
    quantize_rtn(model, variant.bits, variant.group_size)
    return PackedRunner(str(variant), model, tokenizer)
