"""Task accuracy paired against a baseline: Δaccuracy with its interval, flips both ways, McNemar.

Two variants answer the very same items, so their accuracies are compared item by item, not as two
independent proportions (lm-eval's own comparison is an unpaired z-test): each item's difference
``variant - baseline`` is -1 (a flip from right to wrong), +1 (wrong to right) or 0, and

- Δaccuracy is the mean difference, with a paired bootstrap percentile interval (items resampled
  together, seeded so a run is reproducible; :func:`edgekit.measure.stats.block_bootstrap_interval` with
  blocks of one item: task items are independent draws, unlike the tokens of one text);
- the flips are counted both ways: an accuracy that does not move can hide many answers that
  changed ("Accuracy is not all you need", Dutta et al., NeurIPS 2024, who find flips track KL);
- McNemar's exact test asks whether the flips lean one way: under no difference each discordant
  item is a fair coin, so p is the two-sided binomial test of the right-to-wrong count among all
  flips (``scipy.stats.binomtest``).

Rows are comparable only if both saw the same token ids: a BOS token or a chat template that one
row adds and the other does not changes every score (lm-eval issue #2676, arc_easy 0.26 vs 0.85).
:func:`prompt_fingerprint` hashes the exact token ids every item produced, and :func:`paired_accuracy`
refuses, in one line, to pair answers whose fingerprints differ.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np
from scipy import stats

from edgekit.core.errors import InputError
from edgekit.measure.stats import block_bootstrap_interval

BOOTSTRAP_RESAMPLES = 2000


@dataclass(frozen=True)
class TaskAnswers:
    """One variant's answers to one task: per item (in ``doc_ids`` order) right or wrong, and the
    fingerprint of the token ids its prompts produced."""

    task: str
    doc_ids: tuple[int, ...]
    correct: tuple[bool, ...]
    fingerprint: str

    @property
    def accuracy(self) -> float:
        return float(np.mean(self.correct)) if self.correct else float("nan")

    def correct_string(self) -> str:
        """The answers as one compact string, "1" right and "0" wrong (how the store keeps them)."""
        return "".join("1" if c else "0" for c in self.correct)


def prompt_fingerprint(items: Mapping[tuple[int, int], Sequence[int]]) -> str:
    """A short hash of the token ids of every request, keyed by (doc id, request index within the doc),
    BOS and chat template included as the model saw them."""
    canonical = json.dumps(sorted([doc, idx, [int(t) for t in ids]] for (doc, idx), ids in items.items()))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def mcnemar_exact_p(right_to_wrong: int, wrong_to_right: int) -> float:
    """Two-sided exact McNemar p: the binomial test of ``right_to_wrong`` among all flips at 1/2 (1.0 without
    flips)."""
    flips = right_to_wrong + wrong_to_right
    if flips == 0:
        return 1.0
    return float(stats.binomtest(right_to_wrong, flips, 0.5).pvalue)


def paired_accuracy(base: TaskAnswers, variant: TaskAnswers, level: float = 0.95,
                    resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> dict:
    """The variant against the baseline on the same items: the store's per-task keys
    (``task_accuracy``, ``task_accuracy_delta``, ``task_accuracy_delta_ci95``, ``flips_right_to_wrong``,
    ``flips_wrong_to_right``, ``mcnemar_p``, ``prompt_fingerprint``, ``task_items``)."""
    if base.fingerprint != variant.fingerprint:
        raise InputError(f"refusing to pair {variant.task} answers: the prompts' token ids differ from the baseline's "
                         f"(fingerprint {variant.fingerprint} vs {base.fingerprint}: another tokenizer, BOS or chat "
                         "template); score both with the same tokenizer and settings")
    if base.doc_ids != variant.doc_ids:
        raise InputError(f"refusing to pair {variant.task} answers: the items differ from the baseline's "
                         f"({len(variant.doc_ids)} vs {len(base.doc_ids)}); score both with the same --limit")
    b, v = np.asarray(base.correct, bool), np.asarray(variant.correct, bool)
    diff = v.astype(float) - b.astype(float)
    right_to_wrong, wrong_to_right = int((b & ~v).sum()), int((~b & v).sum())
    if len(diff) >= 2:
        delta, low, high, _ = block_bootstrap_interval(diff, level, block=1, resamples=resamples, seed=seed)
    else:
        delta, low, high = float(diff.mean()) if len(diff) else float("nan"), float("nan"), float("nan")
    return {"task_accuracy": variant.accuracy, "task_accuracy_delta": delta,
            "task_accuracy_delta_ci95": [low, high], "flips_right_to_wrong": right_to_wrong,
            "flips_wrong_to_right": wrong_to_right, "mcnemar_p": mcnemar_exact_p(right_to_wrong, wrong_to_right),
            "prompt_fingerprint": variant.fingerprint, "task_items": len(diff)}


def kl_flip_relation(rows: Iterable[tuple[float, float]]) -> dict:
    """How each row's KL from the baseline goes with its flip rate (flips both ways per item), across
    rows: Spearman's rank correlation (None with fewer than three rows or no spread)."""
    pairs = [(kl, rate) for kl, rate in rows if kl is not None and rate is not None
             and np.isfinite(kl) and np.isfinite(rate)]
    if len(pairs) < 3 or len({p[0] for p in pairs}) < 2 or len({p[1] for p in pairs}) < 2:
        return {"rows": len(pairs), "spearman": None, "p": None}
    result = stats.spearmanr([p[0] for p in pairs], [p[1] for p in pairs])
    return {"rows": len(pairs), "spearman": float(result.statistic), "p": float(result.pvalue)}


def rate_interval(count: int, items: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a rate ``count / items`` (a flip rate): sound near 0 and 1, where the normal
    approximation's interval leaves [0, 1]."""
    if items <= 0:
        return float("nan"), float("nan")
    ci = stats.binomtest(count, items).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)
