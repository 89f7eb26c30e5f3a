"""Quality and latency, written once against the Runner interface.

Perplexity follows the Hugging Face guide "Perplexity of fixed-length models": windows of
``context`` tokens advance by ``stride``; each window scores only the tokens the previous
window did not (the first window scores all but its first token), so every scored token
sees at least ``context - stride`` tokens of history; the loss is token-weighted. For a model whose
tokenizer begins every text with a BOS token (:func:`edgekit.core.paths.bos_token_id`, read from the
runner's tokenizer), every window is fed that token first, as llama.cpp's ``perplexity`` feeds each
chunk: the model sees ``context + 1`` positions and the scored tokens are the same.

Against a baseline on the same windows and the same scored tokens, a variant also gets
the KL divergence KL(baseline || variant) of the next-token distributions and the top-1
agreement (the same most likely token), as llama.cpp's ``perplexity --kl-divergence``
reports them. Every quality figure carries its uncertainty: scored tokens within a window
are correlated, so the standard errors treat each window as one sample of a ratio
estimator (sum over window / tokens in window). The perplexity delta is paired: both
models' losses on the same window are differenced before the error is taken.

Intervals use Student's t with (windows - 1) degrees of freedom, not the normal 1.96: an
evaluation scores a few to a few hundred windows, and with 15 windows a z-interval is 9%
too narrow, with 3 windows less than half as wide as it should be (its coverage of a 95%
claim falls to about 80%). :func:`paired_difference` compares two variants window by window
on the same tokens (the paired test a reviewer asks for when two variants are ranked), and
:func:`delta_reading` names what an interval allows one to say, reading both sides alike: a
difference resolved on this text (the interval assumes windows independent; neighbouring windows
of one text are not quite) is a claim about this text, whichever its sign; another split
(``--eval-text``) tells whether it holds.

Per-token figures (the KL, the top-1 agreement and the log-likelihood difference of each scored
token) also get a circular block bootstrap interval (Politis & Romano 1992) beside the window
t-interval: the scored tokens, in text order, are resampled in blocks long enough to keep their
autocorrelation (length chosen by the Politis & White 2004 rule, with the Patton, Politis & White
2009 correction), seeded so a run is reproducible. An iid bootstrap or a naive standard error over
tokens treats every token as independent and is far too narrow on text.

A baseline's log-probabilities are kept whole (``[scored, vocab]`` float32, memory-mapped) or,
for a large vocabulary or token budget, as its ``top_k`` most likely tokens and the log of the
mass of all the others. llama.cpp's ``--kl-divergence-base`` file keeps every token at 16 bits
instead; top-k is smaller still (k = 64: 0.5 KB a token against 128 KB of float32 for a vocabulary
of 32000). Top-1 agreement against it is exact (the baseline's argmax is its first entry). The KL
is that of the two distributions with the tail merged into one outcome: by the log-sum inequality
it is never above the full-vocabulary KL, and falls short of it by the tail's mass times the KL
within the tail, small when the baseline's top k hold nearly all of its mass.

Latency times :meth:`Runner.generate_stream` from outside: time to first token (prefill),
then the gap between successive tokens (decode), over repeated runs after a warm-up that
lasts until the per-token time is steady, with CUDA events on a GPU; the achieved memory
bandwidth (weight bytes x tokens/s) is set beside what the device's copy bandwidth allows,
as gpt-fast's benchmark prints it.
"""
from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgekit.core.caches import cache_build
from edgekit.core.errors import InputError
from edgekit.core.paths import bos_token_id
from edgekit.core.progress import tqdm
from edgekit.measure.stats import block_bootstrap_interval, delta_reading, ratio_interval, ratio_stat, t_quantile


@dataclass(frozen=True)
class EvalSettings:
    context: int = 256
    stride: int = 128
    max_tokens: int | None = 16384  # evaluate the first N tokens of the text (None: all)
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.context < 2:
            raise InputError(f"context={self.context}; use at least 2 tokens")
        if not 0 < self.stride <= self.context:
            raise InputError(f"stride={self.stride} must be between 1 and the context ({self.context})")


@dataclass(frozen=True)
class Window:
    begin: int
    end: int
    target_len: int  # the last target_len positions of the window are scored targets


def sliding_windows(n_tokens: int, context: int, stride: int) -> list[Window]:
    """The HF perplexity-guide windows over a sequence of ``n_tokens`` tokens."""
    if n_tokens < 2:
        raise InputError(f"the text has {n_tokens} token(s); perplexity needs at least 2, give a longer text")
    windows, prev_end = [], 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + context, n_tokens)
        windows.append(Window(begin, end, end - prev_end))
        prev_end = end
        if end == n_tokens:
            break
    return windows


def scored_positions(window: Window, bos: int | None = None) -> np.ndarray:
    """Positions inside the window (after its ``bos`` when it has one) whose logits predict a scored target
    (target = position + 1)."""
    length = window.end - window.begin
    first_target = max(1, length - window.target_len)
    return np.arange(first_target - 1, length - 1) + (bos is not None)


def window_ids(ids: torch.Tensor, window: Window, bos: int | None = None) -> torch.Tensor:
    """The token ids a runner is fed for ``window`` of ``ids``: the BOS rule's token first, when there is one."""
    tokens = ids[window.begin : window.end]
    return tokens if bos is None else torch.cat([tokens.new_tensor([bos]), tokens])


@dataclass
class Scores:
    """Per-window sums of one runner on a token sequence; enough to rebuild every statistic."""

    tokens: int
    nll: np.ndarray          # per-window summed negative log-likelihood (nats)
    counts: np.ndarray       # per-window scored tokens
    logprobs: np.ndarray | None = None   # [scored, vocab] float32, kept for a baseline
    top1: np.ndarray | None = None       # [scored] argmax ids, kept for a baseline
    kl: np.ndarray | None = None         # per-window summed KL vs the baseline
    agree: np.ndarray | None = None      # per-window top-1 agreements with the baseline
    token_nll: np.ndarray | None = None    # [scored] each scored token's negative log-likelihood, text order
    token_kl: np.ndarray | None = None     # [scored] each scored token's KL vs the baseline
    token_agree: np.ndarray | None = None  # [scored] 1 where the top-1 matched the baseline's
    top_ids: np.ndarray | None = None      # [scored, k] a top-k baseline's most likely token ids, likeliest first
    top_logprobs: np.ndarray | None = None  # [scored, k] their log-probabilities
    tail_logprob: np.ndarray | None = None  # [scored] log of the probability of every token outside the top k

    @property
    def scored_tokens(self) -> int:
        return int(self.counts.sum())

    def perplexity(self) -> dict:
        mean, se = ratio_stat(self.nll, self.counts)
        _, lo, hi = ratio_interval(self.nll, self.counts)
        return {"perplexity": math.exp(mean), "log_ppl_se": se, "perplexity_ci95": [math.exp(lo), math.exp(hi)],
                "scored_tokens": self.scored_tokens, "windows": len(self.counts)}

    def save(self, folder: Path) -> Path:
        """Keep these scores (a baseline's log-probabilities included) in ``folder``, written whole or not at all."""
        arrays = {k: v for k, v in (("nll", self.nll), ("counts", self.counts), ("top1", self.top1),
                                    ("kl", self.kl), ("agree", self.agree), ("token_nll", self.token_nll),
                                    ("token_kl", self.token_kl), ("token_agree", self.token_agree),
                                    ("top_ids", self.top_ids), ("top_logprobs", self.top_logprobs),
                                    ("tail_logprob", self.tail_logprob)) if v is not None}

        def write(out: Path) -> None:
            np.savez(out / "sums.npz", tokens=np.array(self.tokens), **arrays)
            if self.logprobs is not None:
                np.save(out / "logprobs.npy", self.logprobs)
        return folder if (Path(folder) / "sums.npz").is_file() else cache_build(folder, write)

    @classmethod
    def load(cls, folder: Path) -> "Scores":
        """Scores kept by :meth:`save`; the log-probabilities stay on disk, memory-mapped copy-on-write (torch
        reads a window of them without a copy, and warns about a read-only mapping; nothing writes them)."""
        folder = Path(folder)
        with np.load(folder / "sums.npz") as sums:
            arrays = {k: sums[k] for k in sums.files}
        logprobs = folder / "logprobs.npy"
        return cls(tokens=int(arrays.pop("tokens")), logprobs=np.load(logprobs, mmap_mode="c") if logprobs.is_file()
                   else None, **arrays)

    @property
    def base_top_k(self) -> int | None:
        """k when these are a baseline kept as its top-k log-probabilities, else None."""
        return None if self.top_ids is None else int(self.top_ids.shape[1])

    def tail_mass(self) -> float | None:
        """A top-k baseline's mean probability outside its top k (None for a full one): about the share of
        the KL that merging the tail leaves out, when the variant's error is spread evenly over the vocabulary."""
        return None if self.tail_logprob is None else float(np.exp(self.tail_logprob.astype(float)).mean())

    def against(self, baseline: "Scores", bootstrap: bool = True) -> dict:
        """Delta perplexity (paired), KL and top-1 agreement against ``baseline``, with window t-intervals
        (``*_ci95``) and, with ``bootstrap`` and per-token figures on both sides, block bootstrap
        intervals over the scored tokens (``*_ci95_bootstrap``, :func:`block_bootstrap_interval`)."""
        _check_same_tokens(self, baseline)
        delta, lo, hi = ratio_interval(self.nll - baseline.nll, self.counts)
        out = {"delta_ppl_pct": 100 * math.expm1(delta),
               "delta_ppl_pct_ci95": [100 * math.expm1(lo), 100 * math.expm1(hi)],
               "delta_ppl_reading": delta_reading(lo, hi), "t_multiplier": t_quantile(len(self.counts))}
        if self.kl is not None:
            kl, kl_se = ratio_stat(self.kl, self.counts)
            top1, top1_se = ratio_stat(self.agree, self.counts)
            out.update(kl_divergence=kl, kl_divergence_se=kl_se, top1_agreement=top1, top1_agreement_se=top1_se,
                       kl_divergence_ci95=list(ratio_interval(self.kl, self.counts)[1:]),
                       top1_agreement_ci95=list(ratio_interval(self.agree, self.counts)[1:]),
                       kl_base_top_k=baseline.base_top_k, kl_base_tail_mass=baseline.tail_mass())
        if bootstrap and self.token_nll is not None and baseline.token_nll is not None:
            mean, lo, hi, block = block_bootstrap_interval(self.token_nll.astype(float) - baseline.token_nll)
            out.update(delta_ppl_pct_ci95_bootstrap=[100 * math.expm1(lo), 100 * math.expm1(hi)],
                       bootstrap_block_tokens=block)
            for key, values in (("kl_divergence", self.token_kl), ("top1_agreement", self.token_agree)):
                if values is not None:
                    out[f"{key}_ci95_bootstrap"] = list(block_bootstrap_interval(values)[1:3])
        return out


def _check_same_tokens(a: Scores, b: Scores) -> None:
    if len(a.counts) != len(b.counts) or not np.array_equal(a.counts, b.counts):
        raise InputError("these scores come from other tokens or settings; score both on the same text and settings")


def paired_difference(a: Scores, b: Scores, level: float = 0.95) -> dict:
    """Variant ``a`` against variant ``b`` on the same tokens, window by window (a paired comparison).

    Ranking two quantized variants by their separate intervals against fp32 wastes what they
    share: both saw the same windows, so the text's difficulty cancels in ``a - b``. Returns
    the perplexity ratio of ``a`` over ``b`` in percent with its t-interval, and, when both were
    scored against the same baseline, the KL and top-1 differences (a minus b) with theirs; each
    ``*_reading`` says "a lower", "b lower" or "indistinguishable" at ``level``. With per-token
    figures on both sides each interval also comes as a block bootstrap over the tokens (``*_ci_bootstrap``).
    """
    _check_same_tokens(a, b)
    d, lo, hi = ratio_interval(a.nll - b.nll, a.counts, level)
    out = {"delta_ppl_pct": 100 * math.expm1(d), "delta_ppl_pct_ci": [100 * math.expm1(lo), 100 * math.expm1(hi)],
           "delta_ppl_reading": _which(lo, hi), "windows": len(a.counts), "level": level}
    if a.token_nll is not None and b.token_nll is not None:
        _, lo, hi, _ = block_bootstrap_interval(a.token_nll.astype(float) - b.token_nll, level)
        out["delta_ppl_pct_ci_bootstrap"] = [100 * math.expm1(lo), 100 * math.expm1(hi)]
    for key, x, y, tx, ty in (("kl_divergence", a.kl, b.kl, a.token_kl, b.token_kl),
                              ("top1_agreement", a.agree, b.agree, a.token_agree, b.token_agree)):
        if x is not None and y is not None:
            m, lo, hi = ratio_interval(np.asarray(x) - np.asarray(y), a.counts, level)
            out.update({f"{key}_diff": m, f"{key}_diff_ci": [lo, hi], f"{key}_reading": _which(lo, hi)})
            if tx is not None and ty is not None:
                out[f"{key}_diff_ci_bootstrap"] = list(block_bootstrap_interval(tx.astype(float) - ty, level)[1:3])
    return out


def _which(lo: float, hi: float) -> str:
    return "a lower" if hi < 0 else "b lower" if lo > 0 else "indistinguishable"


def score(runner, token_ids: torch.Tensor, settings: EvalSettings = EvalSettings(),
          baseline: Scores | None = None, keep_logprobs: bool = False, progress: bool = True,
          top_k: int | None = None) -> Scores:
    """Run ``runner`` over the sliding windows of ``token_ids`` (1-D) and collect per-window sums
    and per-token figures.

    With ``baseline`` (from a run with ``keep_logprobs=True`` on the same ids and
    settings), KL divergence and top-1 agreement are computed on exactly its scored tokens.
    ``keep_logprobs`` stores this runner's log-probabilities in a temporary memory-mapped
    file, so a large vocabulary does not have to fit in RAM; with ``top_k`` only the k most
    likely tokens' and the tail's (see the module docstring for what KL against them means). Each window
    begins with the BOS token when ``runner.tokenizer`` adds one (:func:`edgekit.core.paths.bos_token_id`).
    """
    if top_k is not None and not 1 <= top_k:
        raise InputError(f"top_k={top_k}; keep at least the most likely token (top_k >= 1), or None for all")
    ids = token_ids.reshape(-1)
    if settings.max_tokens:
        ids = ids[: settings.max_tokens]
    windows = sliding_windows(len(ids), settings.context, settings.stride)
    bos = bos_token_id(getattr(runner, "tokenizer", None))
    n_scored = sum(len(scored_positions(w)) for w in windows)
    if baseline is not None and baseline.scored_tokens != n_scored:
        raise InputError("the baseline was scored on other tokens or settings; score both on the same text and "
                         "settings")
    nll, counts = np.zeros(len(windows)), np.zeros(len(windows), dtype=np.int64)
    token_nll = np.zeros(n_scored, dtype=np.float32)
    kl = np.zeros(len(windows)) if baseline is not None else None
    agree = np.zeros(len(windows)) if baseline is not None else None
    token_kl = np.zeros(n_scored, dtype=np.float32) if baseline is not None else None
    token_agree = np.zeros(n_scored, dtype=np.uint8) if baseline is not None else None
    kept = {}
    offset = 0
    bar = tqdm(total=len(windows), desc=f"score {runner.name}", unit="win", disable=not progress, leave=False)
    for batch in _batches_of_equal_length(windows, settings.batch_size):
        input_ids = torch.stack([window_ids(ids, windows[i], bos) for i in batch])
        logits = runner.logits(input_ids)
        logp_all = torch.log_softmax(logits.float(), dim=-1)
        for row, i in enumerate(batch):
            pos = torch.from_numpy(scored_positions(windows[i], bos))
            here = slice(offset, offset + len(pos))
            targets = input_ids[row, pos + 1]
            logp = logp_all[row, pos]
            token_nll[here] = -logp.gather(1, targets[:, None])[:, 0].numpy()
            nll[i] = float(token_nll[here].astype(float).sum())
            counts[i] = len(pos)
            if keep_logprobs:
                _keep(kept, logp, here, n_scored, top_k)
            if baseline is not None:
                token_kl[here] = _kl_from(baseline, here, logp).numpy()
                token_agree[here] = logp.argmax(-1).numpy() == baseline.top1[here]
                kl[i], agree[i] = float(token_kl[here].astype(float).sum()), float(token_agree[here].sum())
            offset += len(pos)
        bar.update(len(batch))
    bar.close()
    return Scores(len(ids), nll, counts, kl=kl, agree=agree, token_nll=token_nll, token_kl=token_kl,
                  token_agree=token_agree, **kept)


def _keep(kept: dict, logp: torch.Tensor, here: slice, n_scored: int, top_k: int | None) -> None:
    """Store a baseline's log-probabilities of the tokens ``here``: whole, or its top k and the tail's mass."""
    if not kept:
        kept["top1"] = np.zeros(n_scored, dtype=np.int64)
        if top_k is None:
            kept["logprobs"] = _scratch_array((n_scored, logp.shape[-1]))
        else:
            k = min(top_k, logp.shape[-1] - 1)
            kept.update(top_ids=np.zeros((n_scored, k), dtype=np.int32),
                        top_logprobs=np.zeros((n_scored, k), dtype=np.float32),
                        tail_logprob=np.zeros(n_scored, dtype=np.float32))
    kept["top1"][here] = logp.argmax(-1).numpy()
    if top_k is None:
        kept["logprobs"][here] = logp.numpy()
        return
    top = logp.topk(kept["top_ids"].shape[1], dim=-1)
    kept["top_ids"][here], kept["top_logprobs"][here] = top.indices.numpy(), top.values.numpy()
    kept["tail_logprob"][here] = _tail_logprob(logp, top.indices).numpy()


def _tail_logprob(logp: torch.Tensor, top_ids: torch.Tensor) -> torch.Tensor:
    """log of the probability outside ``top_ids`` in each row, summed over the tail itself (no 1 - sum
    cancellation)."""
    return logp.scatter(-1, top_ids, float("-inf")).logsumexp(-1)


def _kl_from(baseline: Scores, here: slice, logp: torch.Tensor) -> torch.Tensor:
    """KL(baseline || this runner) of each scored token ``here``; over the baseline's top k and its tail when it
    kept only those (a lower bound of the full KL, see the module docstring)."""
    if baseline.top_ids is None:
        base = torch.from_numpy(np.asarray(baseline.logprobs[here]))
        return (base.exp() * (base - logp)).sum(-1)
    top_ids = torch.from_numpy(np.asarray(baseline.top_ids[here], dtype=np.int64))
    base_top = torch.from_numpy(np.asarray(baseline.top_logprobs[here]))
    base_tail = torch.from_numpy(np.asarray(baseline.tail_logprob[here]))
    here_top, here_tail = logp.gather(-1, top_ids), _tail_logprob(logp, top_ids)
    return ((base_top.exp() * (base_top - here_top)).sum(-1)
            + torch.where(base_tail > float("-inf"), base_tail.exp() * (base_tail - here_tail), 0.0))


def _batches_of_equal_length(windows: list[Window], size: int):
    """Indices of consecutive windows, grouped so that each batch has one length."""
    batch: list[int] = []
    for i, w in enumerate(windows):
        first = windows[batch[0]] if batch else None
        if batch and (len(batch) == size or first.end - first.begin != w.end - w.begin):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


def _scratch_array(shape: tuple[int, int]) -> np.ndarray:
    tmp = tempfile.NamedTemporaryFile(prefix="edgekit-logprobs-", suffix=".f32")
    array = np.memmap(tmp.name, dtype=np.float32, mode="w+", shape=shape)
    array._edgekit_tmpfile = tmp  # the file is deleted when the array is garbage-collected
    return array
