"""Log-probabilities for ``/v1/completions``: OpenAI's ``logprobs`` (top up to 5) and ``echo``.

With them a served artifact can be scored the way lm-eval's ``local-completions`` model scores an
OpenAI-compatible server: it sends the context and continuation as one prompt with ``echo: true``,
``logprobs: 1`` and ``max_tokens: 1``, and reads the continuation's log-probabilities (and whether each
token was the most likely one) back from the echoed prompt's ``token_logprobs`` and ``top_logprobs``.

A :class:`ScoredJob` decodes greedily through the Runner's logits (the whole sequence at each step, as
sampling does in :mod:`edgekit.serve.engine`), on the engine's worker thread like every other job, and
keeps the log-softmax of every position it saw: the prompt's (for ``echo``) and each new token's. Those
are the Runner's own log-probabilities, so the served figures are the direct backend's. The answer is
the legacy completions ``logprobs`` object: ``tokens``, ``token_logprobs`` (null for the first prompt
token, which nothing predicts), ``top_logprobs`` (token text -> log-probability, the ``logprobs`` most
likely) and ``text_offset``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import torch

from edgekit.serve.engine import Job

MAX_TOP_LOGPROBS = 5  # OpenAI's limit for the completions endpoint


@dataclass(eq=False)
class ScoredJob(Job):
    """A greedy job that keeps its log-probabilities: ``top`` most likely per position, the prompt's too
    when ``echo``. It decodes alone (never in a batch), so every position is scored."""

    top: int = 0
    echo: bool = False
    # per scored position: (token id, its log-probability, [(id, log-probability) of the top ones])
    scores: list[tuple[int, float, list[tuple[int, float]]]] = field(default_factory=list)

    @property
    def batchable(self) -> bool:
        return False

    def scored_tokens(self, runner) -> Iterator[int]:
        """Greedy decoding through ``runner.logits``, scoring each position as it goes."""
        seq = self.ids.reshape(1, -1).cpu()
        for step in range(self.max_new_tokens):
            logp = torch.log_softmax(runner.logits(seq)[0].float(), dim=-1)
            if step == 0 and self.echo:
                for pos in range(1, seq.shape[1]):
                    self._keep(logp[pos - 1], int(seq[0, pos]))
            token = int(logp[-1].argmax())
            self._keep(logp[-1], token)
            yield token
            seq = torch.cat([seq, torch.tensor([[token]])], dim=1)

    def _keep(self, logp: torch.Tensor, token: int) -> None:
        values, ids = logp.topk(self.top) if self.top else (torch.empty(0), torch.empty(0, dtype=torch.long))
        self.scores.append((token, float(logp[token]), list(zip(ids.tolist(), values.tolist()))))

    def logprobs(self, tokenizer) -> dict:
        """OpenAI's completions ``logprobs`` object for the echoed prompt (if asked) and the new tokens."""
        first = [int(self.ids.reshape(-1)[0])] if self.echo else []
        kept = self.scores  # every token decoded, an end-of-text or stop token included (lm-eval reads up to it)
        ids = first + [token for token, _, _ in kept]
        pieces = [tokenizer.decode([i]) for i in ids]
        offsets = [sum(len(p) for p in pieces[:i]) for i in range(len(pieces))]
        return {"tokens": pieces,
                "token_logprobs": [None] * len(first) + [lp for _, lp, _ in kept],
                "top_logprobs": [None] * len(first) + [{tokenizer.decode([i]): v for i, v in top}
                                                       for _, _, top in kept],
                "text_offset": offsets}


def token_prompt(prompt: list, vocab: int) -> torch.Tensor | None:
    """A prompt sent as token ids (one list, or a list holding one list) as a [1, seq] tensor; None if it is
    empty, holds several prompts or an id outside the vocabulary."""
    ids = prompt[0] if prompt and isinstance(prompt[0], list) and len(prompt) == 1 else prompt
    if not ids or not all(isinstance(i, int) and 0 <= i < vocab for i in ids):
        return None
    return torch.tensor([ids], dtype=torch.long)
