"""The same prompt continued by the baseline and by a variant, side by side, with the first token where they part.

KL and top-1 say how often a variant's next token differs from the baseline's; the two greedy continuations
show what that means for text: the same words for a while, then a different token, after which each text
follows its own choices (greedy decoding feeds each model its own output), so everything after the first
difference differs for that reason alone. Both continuations come from :func:`edgekit.models.runner.generate_text`;
the runners come from the registry (through the load guard) one after the other, so only one model is in
memory at a time.
"""
from __future__ import annotations

from dataclasses import dataclass

from edgekit.models.load import load_tokenizer, resolve_source
from edgekit.models.runner import generate_text
from edgekit.runtimes import build_runner
from edgekit.variants.registry import Variant


@dataclass(frozen=True)
class Continuation:
    """One variant's greedy continuation, cut where it parts from the other one."""

    variant: str
    tokens: list[int]
    text: str
    common: str   # the text of the tokens both continuations share
    first: str    # the text of the first token that differs ("" when the continuations are the same)
    rest: str     # the text after it


@dataclass(frozen=True)
class SideBySide:
    prompt: str
    baseline: Continuation
    variant: Continuation
    first_difference: int | None  # index of the first generated token that differs; None: identical

    @property
    def same_tokens(self) -> int:
        """How many generated tokens the two continuations share before they part."""
        return len(self.baseline.tokens) if self.first_difference is None else self.first_difference


def first_difference(a: list[int], b: list[int]) -> int | None:
    """The index of the first position where the token lists differ (a shorter list differs where it ends)."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def side_by_side(model: str, variant: str, prompt: str, baseline: str = "fp32",
                 max_new_tokens: int = 32) -> SideBySide:
    """Continue ``prompt`` greedily with ``baseline`` and with ``variant`` of ``model``."""
    names = [str(Variant.parse(baseline)), str(Variant.parse(variant))]  # a bad name fails before any load
    source, tokenizer = resolve_source(model), load_tokenizer(model)
    generated = [_generate(name, source, tokenizer, prompt, max_new_tokens) for name in names]
    at = first_difference(generated[0][0], generated[1][0])
    base, other = (_cut(tokenizer, name, tokens, text, at) for name, (tokens, text) in zip(names, generated))
    return SideBySide(prompt, base, other, at)


class _Recorded:
    """A runner that keeps the token ids it generates (generate_text returns only their text)."""

    def __init__(self, runner) -> None:
        self.runner, self.tokenizer, self.tokens = runner, runner.tokenizer, []

    def generate_stream(self, input_ids, max_new_tokens: int):
        for token in self.runner.generate_stream(input_ids, max_new_tokens):
            self.tokens.append(token)
            yield token


def _generate(name: str, source, tokenizer, prompt: str, max_new_tokens: int) -> tuple[list[int], str]:
    runner = build_runner(name, source, tokenizer)
    try:
        recorded = _Recorded(runner)
        text = generate_text(recorded, prompt, max_new_tokens)
        return recorded.tokens, text
    finally:
        runner.close()


def _cut(tokenizer, name: str, tokens: list[int], text: str, at: int | None) -> Continuation:
    if at is None or at >= len(tokens):
        return Continuation(name, tokens, text, text, "", "")
    common = _decoded_prefix(tokenizer, tokens, at, text, step=-1)
    through = _decoded_prefix(tokenizer, tokens, at + 1, text, step=+1)
    return Continuation(name, tokens, text, common, through[len(common):], text[len(through):])


def _decoded_prefix(tokenizer, tokens: list[int], k: int, text: str, step: int) -> str:
    """The text of ``tokens[:k]``, moving ``k`` by ``step`` until it is a prefix of ``text`` (a character
    split across tokens decodes to a replacement mark until all its bytes are in)."""
    while 0 < k < len(tokens):
        prefix = tokenizer.decode(tokens[:k], skip_special_tokens=True)
        if text.startswith(prefix):
            return prefix
        k += step
    return text if k >= len(tokens) else ""
