"""The KL distillation loop shared by QAT (:mod:`edgekit.quantizers.qat`) and pruning recovery
(:mod:`edgekit.pruning.variants`).

A student learns to match its unmodified teacher's next-token distributions: the loss is
KL(teacher || student) on seeded windows of the train split (Hinton et al. 2015, "Distilling the
Knowledge in a Neural Network"; the logit distillation LLM-QAT, Liu et al. 2023, uses for
quantization and Sheared-LLaMA / Minitron, Xia et al. 2023 and Muralidharan et al. 2024, use to
recover pruned models). Because edgekit measures exactly that KL on the eval split,
:func:`kl_distill` records KL (± se), top-1 and Δppl against the teacher on an eval slice as
training goes, with the training seconds spent, so "KL won back per training minute" is read
off its history.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F

from edgekit.core.errors import InputError
from edgekit.core.paths import begin_with_bos, read_split
from edgekit.core.progress import tqdm
from edgekit.measure.quality import EvalSettings, score
from edgekit.models.runner import TorchRunner


@dataclass(frozen=True)
class DistillSettings:
    """A short, seeded run of the loop: recovery after pruning (all block parameters train, embeddings and
    head frozen), and the base of :class:`edgekit.quantizers.qat.QATSettings`."""

    steps: int = 60
    lr: float = 2e-4
    batch_size: int = 8
    seq_len: int = 128
    seed: int = 0
    eval_every: int = 20       # steps between progress evaluations (0: only before and after)
    eval_tokens: int = 1024    # first tokens of the eval split used for the progress KL
    train_chars: int = 400_000  # windows are drawn from the first characters of the train split

    def __post_init__(self) -> None:
        if self.steps < 1 or self.lr <= 0:
            raise InputError(f"distillation needs steps >= 1 and lr > 0 (got steps={self.steps}, lr={self.lr})")


def text_ids(tokenizer, split: str, chars: int) -> torch.Tensor:
    """Token ids of the first ``chars`` characters of a corpus split."""
    return tokenizer(read_split(split)[:chars], return_tensors="pt", add_special_tokens=False,
                     verbose=False)["input_ids"][0]


def kl_distill(teacher: nn.Module, student: nn.Module, trainable: Iterable[torch.Tensor], tokenizer,
               settings: DistillSettings, desc: str = "distill", progress: bool = True,
               after_step: Callable[[], None] | None = None) -> pd.DataFrame:
    """Train ``trainable`` (parameters of ``student``) to minimise KL(teacher || student) with AdamW and a
    cosine schedule; ``after_step`` runs after each optimizer step (e.g. to keep a pruning mask).
    Returns the history: step, training seconds, KL (± se), top-1 and Δppl against the teacher."""
    trainable = list(trainable)
    optimizer = torch.optim.AdamW(trainable, lr=settings.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, settings.steps)
    eval_ids = text_ids(tokenizer, "eval", 8 * settings.eval_tokens)[: settings.eval_tokens]
    eval_settings = EvalSettings(context=256, stride=128, max_tokens=settings.eval_tokens)
    base = score(TorchRunner("teacher", teacher, tokenizer), eval_ids, eval_settings, keep_logprobs=True,
                 progress=False)
    history = []

    def evaluate(step: int, seconds: float) -> None:
        student.eval()
        found = score(TorchRunner("student", student, tokenizer), eval_ids, eval_settings, baseline=base,
                      progress=False)
        metrics = found.against(base)
        history.append({"step": step, "train_s": seconds, "kl_divergence": metrics["kl_divergence"],
                        "kl_divergence_se": metrics["kl_divergence_se"],
                        "top1_agreement": metrics["top1_agreement"], "delta_ppl_pct": metrics["delta_ppl_pct"]})
        student.train()

    stream = text_ids(tokenizer, "train", settings.train_chars)
    rng = np.random.default_rng(settings.seed)
    seconds = 0.0
    evaluate(0, 0.0)
    for step in tqdm(range(1, settings.steps + 1), desc=desc, disable=not progress):
        start = time.perf_counter()
        offsets = rng.integers(0, len(stream) - settings.seq_len, size=settings.batch_size)
        batch = begin_with_bos(torch.stack([stream[o : o + settings.seq_len] for o in offsets]), tokenizer)
        with torch.no_grad():
            target = F.log_softmax(teacher(input_ids=batch, use_cache=False).logits.float(), -1)
        logp = F.log_softmax(student(input_ids=batch, use_cache=False).logits.float(), -1)
        loss = F.kl_div(logp.flatten(0, 1), target.flatten(0, 1), log_target=True, reduction="batchmean")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if after_step is not None:
            with torch.no_grad():
                after_step()
        seconds += time.perf_counter() - start
        if step == settings.steps or (settings.eval_every and step % settings.eval_every == 0):
            evaluate(step, seconds)
    student.eval()
    return pd.DataFrame(history)


def kl_per_minute(history: pd.DataFrame) -> float:
    """KL won back per training minute: (KL before - KL after) / minutes trained."""
    first, last = history.iloc[0], history.iloc[-1]
    minutes = max(float(last["train_s"]) / 60, 1e-9)
    return (float(first["kl_divergence"]) - float(last["kl_divergence"])) / minutes
