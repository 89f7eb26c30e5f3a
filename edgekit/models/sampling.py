"""Choosing the next token from a position's logits: greedy, or temperature with nucleus (top-p) sampling.

A runner's decoding loop hands each step's last logits to :func:`choose` (one row) or
:func:`choose_rows` (a batch, one chooser per row: ``None`` for greedy). A chooser is any
:data:`Pick`; the one the server uses is :class:`Nucleus` (Holtzman et al., "The Curious Case of
Neural Text Degeneration", ICLR 2020): logits divided by the temperature, softmax, and a draw from
the nucleus, the smallest set of most likely tokens whose mass reaches ``top_p``, in proportion to
their probabilities.

How it draws, and why: by rejection, without sorting. A token is drawn from the whole softmax
(inverse CDF, one uniform from the row's own generator) and kept when it lies in the nucleus: when
the tokens more likely than it hold less than ``top_p``. Kept draws are distributed exactly as the
nucleus, and a draw is kept with probability at least ``top_p``, so a step costs a few passes over
the vocabulary. Sorting the vocabulary (the textbook form) cost up to 2 ms a step for a batch of 8
on a 4,096-token vocabulary and 28 ms on a 49,152-token one, about as much as a decode step of a
small model: sampled serving then ran at 0.2-0.7x greedy. A row that misses :data:`MAX_DRAWS` times
(a tiny ``top_p`` on a flat distribution) is drawn from its sorted nucleus instead.

The arithmetic is NumPy's, single-threaded on purpose: ONNX Runtime's worker threads spin for a
while after each run, and multi-threaded tensor operations between two runs wait for cores they
hold (7 ms a step instead of 0.5 ms, measured). Every row of a batch is drawn as it would be alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

Pick = Callable[[torch.Tensor], int]  # next-token logits [vocab] (float, CPU) -> the chosen token id
MAX_DRAWS = 8  # rejections a row may meet before it is drawn from its sorted nucleus
BLOCK = 64  # tokens per block of the two-level inverse CDF
REACHED = 1e-5  # a mass within this share of top_p reaches it (sums in float32 differ in their last bits)


def choose(logits: torch.Tensor, pick: Pick | None) -> int:
    """The next token from one position's logits: ``pick``'s choice, or the argmax."""
    return int(logits.argmax()) if pick is None else pick(logits.float().cpu())


def choose_rows(logits: np.ndarray | torch.Tensor, picks: list[Pick | None]) -> np.ndarray:
    """The next token of every row of ``logits`` [rows, vocab] (int64): row ``i`` greedy when ``picks[i]`` is
    None, the :class:`Nucleus` rows sampled together, any other pick called on its row. The work is NumPy's
    (see the module's note on ONNX Runtime's spinning threads); a decoding loop without picks takes its
    argmax where its logits are."""
    rows = logits.detach().float().cpu().numpy() if isinstance(logits, torch.Tensor) else np.asarray(logits)
    tokens = rows.argmax(axis=-1)
    nucleus = [i for i, p in enumerate(picks) if isinstance(p, Nucleus)]
    if nucleus:
        tokens[nucleus] = _sample(rows[nucleus].astype(np.float32, copy=False), [picks[i] for i in nucleus],
                                  tokens[nucleus])
    for i, pick in enumerate(picks):
        if pick is not None and not isinstance(pick, Nucleus):
            tokens[i] = pick(torch.from_numpy(rows[i]).float())
    return tokens


@dataclass(frozen=True)
class Nucleus:
    """Temperature and nucleus sampling drawn from ``generator``: a :data:`Pick` for one row, sampled
    with the batch's other Nucleus rows by :func:`choose_rows`."""

    temperature: float
    top_p: float
    generator: torch.Generator

    def __call__(self, logits: torch.Tensor) -> int:
        row = logits.float().cpu().numpy().reshape(1, -1)
        return int(_sample(row, [self], row.argmax(axis=1))[0])

    def uniform(self) -> float:
        return float(torch.rand(1, generator=self.generator, dtype=torch.float64))


def _sample(logits: np.ndarray, samplers: list[Nucleus], likeliest: np.ndarray) -> np.ndarray:
    """One token per row of ``logits`` [rows, vocab] (float32), row ``i`` drawn by ``samplers[i]``
    (``likeliest``: each row's argmax, in every nucleus)."""
    probs = logits - logits.max(axis=1, keepdims=True)  # unnormalised: a row's mass is the sum of its blocks
    probs *= np.array([[1.0 / s.temperature] for s in samplers], dtype=probs.dtype)
    np.exp(probs, out=probs)
    blocks = np.add.reduceat(probs, np.arange(0, probs.shape[1], BLOCK), axis=1)
    block_cdf = np.cumsum(blocks, axis=1)
    mass = block_cdf[:, -1]
    top_p = np.array([s.top_p for s in samplers])
    tokens = np.empty(len(samplers), dtype=np.int64)
    todo = list(range(len(samplers)))
    for _ in range(MAX_DRAWS):
        missed = []
        for i in todo:
            t = _inverse_cdf(probs[i], block_cdf[i], samplers[i].uniform() * mass[i])
            # in the nucleus when the tokens more likely than t hold less than top_p (the argmax always is)
            above = 0.0 if top_p[i] >= 1.0 or t == likeliest[i] else np.sum(probs[i], where=probs[i] > probs[i, t])
            if above < top_p[i] * mass[i] * (1 - REACHED):
                tokens[i] = t
            else:
                missed.append(i)
        todo = missed
        if not todo:
            return tokens
    for i in todo:
        tokens[i] = _from_sorted_nucleus(probs[i], min(top_p[i], 1.0), samplers[i].uniform())
    return tokens


def _inverse_cdf(probs: np.ndarray, block_cdf: np.ndarray, target: float) -> int:
    """The first token whose cumulative mass exceeds ``target``: its block from the blocks' running sums,
    then its place in that block (a running sum of the whole row costs more than the rest of a step)."""
    b = min(len(block_cdf) - 1, int(np.searchsorted(block_cdf, target, side="right")))
    start = b * BLOCK
    inner = np.cumsum(probs[start:start + BLOCK])
    j = int(np.searchsorted(inner, target - (block_cdf[b - 1] if b else 0.0), side="right"))
    return min(start + j, len(probs) - 1)


def _from_sorted_nucleus(probs: np.ndarray, top_p: float, u: float) -> int:
    """Inverse-CDF draw from the most likely tokens, in order, whose mass first reaches ``top_p``."""
    order = np.argsort(-probs, kind="stable")
    cdf = np.cumsum(probs[order])
    kept = min(len(order), int(np.searchsorted(cdf, top_p * cdf[-1])) + 1)
    return int(order[min(kept - 1, int(np.searchsorted(cdf[:kept], u * cdf[kept - 1], side="right")))])
