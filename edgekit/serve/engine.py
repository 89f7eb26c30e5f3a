"""Requests in, text out: the work behind :mod:`edgekit.serve.app`, apart from HTTP.

One worker thread owns the runner (a :class:`~edgekit.serve.batching.DynamicBatcher`): llama.cpp is not
safe to call from two threads, and on a CPU two decodes at once only share the same cores. In
front of it :meth:`Engine.submit` keeps a bounded admission count and raises :class:`QueueFull`
once ``max_queue`` requests are waiting or decoding, so an overloaded server answers 429 at once
instead of growing a queue whose every entry would time out (the bounded queue of the serving
guides; llama-server and vLLM refuse the same way).

Each request is a :class:`Job`. The worker

- skips jobs cancelled while they waited (client gone, timed out);
- decodes the non-streaming jobs of one batch together with ``runner.generate_batch``, greedy and
  sampled rows side by side (the batch runs to its end: a job cancelled meanwhile is dropped after it);
- decodes every other job alone, one token at a time, and stops between two tokens as soon as
  the job is cancelled, a stop string appears or the end-of-text token comes.

Sampling (``temperature`` > 0 with nucleus ``top_p``) is a :class:`~edgekit.models.sampling.Nucleus`
the runner's KV-cache loop applies to each step's last logits, so a sampled token costs one forward
pass as a greedy one does, and the sampled rows of a batch are drawn together. A temperature below
:data:`MIN_TEMPERATURE` is greedy (dividing logits by it would overflow), as in vLLM.

Events go back to whoever waits through the job's ``deliver`` callback (the HTTP handler passes
one that hands them to its asyncio loop); each job ends with exactly one ``done``, ``error`` or
``cancelled`` event.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch

from edgekit.core.errors import EdgekitError, InputError
from edgekit.models.sampling import Nucleus
from edgekit.serve.batching import DynamicBatcher

MIN_TEMPERATURE = 1e-5  # below it sampling is greedy (vLLM's _SAMPLING_EPS)
Event = tuple[str, object]  # ("text", piece) | ("done", finish_reason) | ("error", exception) | ("cancelled", None)


class QueueFull(EdgekitError):
    """The server already holds as many requests as it admits; retry later."""


class TextStream:
    """Token ids in, text pieces out, ending at a stop string or the end-of-text token.

    Each piece is what ``decode(all tokens so far)`` gained, less what may still change: a
    trailing incomplete UTF-8 character (decoded as U+FFFD) and a trailing part that could be
    the start of a stop string. Text from the first stop string on is never sent, as in
    OpenAI's API.
    """

    def __init__(self, tokenizer, stop: Iterable[str] = (), eos_token_id: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.eos_token_id = eos_token_id
        self.tokens: list[int] = []
        self._text = ""
        self._sent = 0

    def feed(self, token: int) -> tuple[str, bool]:
        """Add one token; return the text now safe to send and whether the answer has ended."""
        self.tokens.append(token)
        if token == self.eos_token_id:
            return self.flush(), True
        self._text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        hits = [i for i in (self._text.find(s) for s in self.stop) if i >= 0]
        if hits:
            return self._take(min(hits)), True
        return self._take(len(self._text) - self._held_back()), False

    def flush(self) -> str:
        """Whatever is left once no more tokens come."""
        return self._take(len(self._text))

    def _held_back(self) -> int:
        text, held = self._text, len(self._text) - len(self._text.rstrip("\ufffd"))
        for s in self.stop:
            for k in range(min(len(s) - 1, len(text)), held, -1):
                if text.endswith(s[:k]):
                    held = k
                    break
        return held

    def _take(self, end: int) -> str:
        piece = self._text[self._sent:end] if end > self._sent else ""
        self._sent = max(self._sent, end)
        return piece


@dataclass(eq=False)
class Job:
    """One request's work: the prompt, how to pick tokens, where its events go, and its timestamps."""

    ids: torch.Tensor  # [1, seq] prompt token ids
    max_new_tokens: int
    text: TextStream
    deliver: Callable[[Event], None]
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stream: bool = False
    cancelled: threading.Event = field(default_factory=threading.Event)
    arrived: float = field(default_factory=time.perf_counter)
    started: float | None = None
    first_token_at: float | None = None
    finished_at: float | None = None
    _ended: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        if self.temperature < MIN_TEMPERATURE:
            self.temperature = 0.0

    @property
    def batchable(self) -> bool:
        """Answered at once: it can share ``generate_batch`` with others."""
        return not self.stream

    def pick(self):
        """The job's token chooser for the runner's decoding loop (None: greedy)."""
        if self.temperature == 0:
            return None
        generator = torch.Generator()
        if self.seed is None:
            generator.seed()
        else:
            generator.manual_seed(self.seed)
        return Nucleus(self.temperature, self.top_p, generator)

    @property
    def new_tokens(self) -> int:
        return len(self.text.tokens)

    def cancel(self) -> None:
        self.cancelled.set()

    def finish(self, kind: str, value: object = None) -> None:
        """Send the job's one terminal event (later calls are ignored)."""
        if not self._ended:
            self._ended = True
            self.finished_at = time.perf_counter()
            self.deliver((kind, value))


class Engine:
    """The runner behind a bounded queue and a dynamic batcher; ``runner`` is set once it is loaded."""

    def __init__(self, *, max_batch: int = 8, max_wait_ms: float = 10.0, max_queue: int = 64,
                 on_finished: Callable[[Job], None] = lambda job: None) -> None:
        if max_queue < 1:
            raise InputError(f"max_queue={max_queue}; admit at least 1 request")
        self.runner = None
        self.max_queue = max_queue
        self.on_finished = on_finished
        self._pending = 0
        self._lock = threading.Lock()
        self.batcher = DynamicBatcher(self._run, max_batch, max_wait_ms)

    @property
    def pending(self) -> int:
        """Requests admitted and not finished: waiting in the queue or decoding."""
        return self._pending

    def submit(self, job: Job) -> None:
        """Admit ``job`` or raise :class:`QueueFull` (RuntimeError once the engine is closed)."""
        with self._lock:
            if self._pending >= self.max_queue:
                raise QueueFull(f"the server holds {self._pending} requests, its limit; retry later")
            self._pending += 1
        try:
            self.batcher.submit(job)
        except RuntimeError:
            self._release(job)
            raise

    def close(self) -> None:
        """Answer every admitted job, then stop the worker."""
        self.batcher.close()

    # ------------------------------------------------------------------ the worker thread
    def _run(self, jobs: list[Job]) -> list[None]:
        live = []
        for job in jobs:
            if job.cancelled.is_set():
                job.finish("cancelled")
                self._release(job)
            else:
                live.append(job)
        together = [j for j in live if j.batchable]
        if len(together) < 2 or not hasattr(self.runner, "generate_batch"):
            together = []  # one greedy job decodes alone, so it can stop early
        if together:
            self._guarded(self._decode_together, together)
        for job in live:
            if job not in together:
                self._guarded(self._decode_alone, [job])
        return [None] * len(jobs)

    def _guarded(self, decode: Callable[[list[Job]], None], jobs: list[Job]) -> None:
        try:
            decode(jobs)
        except Exception as exc:  # noqa: BLE001 - the error belongs to these requests; the worker goes on
            for job in jobs:
                job.finish("error", exc)
        finally:
            for job in jobs:
                self._release(job)

    def _release(self, job: Job) -> None:
        with self._lock:
            self._pending -= 1
        self.on_finished(job)

    def _decode_together(self, jobs: list[Job]) -> None:
        for job in jobs:
            job.started = time.perf_counter()
        picks = [j.pick() for j in jobs]
        outputs = self.runner.generate_batch([j.ids for j in jobs], max(j.max_new_tokens for j in jobs),
                                             **({"picks": picks} if any(picks) else {}))
        for job, tokens in zip(jobs, outputs):
            self._emit(job, tokens[:job.max_new_tokens])

    def _decode_alone(self, jobs: list[Job]) -> None:
        (job,) = jobs
        job.started = time.perf_counter()
        if hasattr(job, "scored_tokens"):  # /v1/completions with logprobs or echo (edgekit.serve.logprobs)
            tokens = job.scored_tokens(self.runner)
        else:
            pick = job.pick()
            tokens = self.runner.generate_stream(job.ids, job.max_new_tokens, **({"pick": pick} if pick else {}))
        try:
            self._emit(job, tokens)
        finally:
            close = getattr(tokens, "close", None)
            if close is not None:  # a generator: free its KV cache now, not at garbage collection
                close()

    @staticmethod
    def _emit(job: Job, tokens: Iterable[int]) -> None:
        """Feed ``tokens`` through the job's text stream; stop at a stop string, EOS or cancellation."""
        for token in tokens:
            if job.first_token_at is None:
                job.first_token_at = time.perf_counter()
            piece, ended = job.text.feed(int(token))
            if piece:
                job.deliver(("text", piece))
            if ended:
                job.finish("done", "stop")
                return
            if job.cancelled.is_set():
                job.finish("cancelled")
                return
        piece = job.text.flush()
        if piece:
            job.deliver(("text", piece))
        job.finish("done", "length")
