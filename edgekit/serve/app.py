"""A verified artifact behind an HTTP server that real clients and real operators can rely on.

Built on FastAPI and uvicorn (their "Deployment" and "Handling errors" guides), with the work
itself in :mod:`edgekit.serve.engine` (a bounded queue in front of one dynamic-batching worker).

For clients:

- ``POST /v1/completions`` and ``POST /v1/chat/completions`` follow OpenAI's API (the ``openai``
  Python client works unchanged): ``max_tokens``, ``stop``, ``temperature`` / ``top_p`` (greedy at
  temperature 0), ``seed``, usage counts, and ``stream: true`` as server-sent events ending in
  ``data: [DONE]``. Chat uses the tokenizer's chat template; a tokenizer without one gets a plain
  ``role: text`` transcript ending in ``assistant:`` (and stops where the next user turn would
  start). ``GET /v1/models`` lists the artifact. Errors carry OpenAI's ``{"error": {...}}`` body.
- ``POST /generate`` is edgekit's own: exact token ids, no stop rules.

For operators (the llama-server / Kubernetes conventions):

- ``GET /health/live`` is 200 while the process and its worker run; ``GET /health/ready`` is 200
  once the model is loaded and a warm-up request has gone through it, and while resident memory
  is within the budget (a device profile's host budget, by default this machine's); 503 with the
  reason otherwise. ``GET /health`` always answers 200 with the whole picture as strict JSON
  (absent figures are null): phase, queue depth, memory pressure, counts by outcome, the last
  error, latency percentiles.
- The server listens at once and loads the model on a side thread; the artifact is verified
  (hashed once) before that, optionally against the checksum the operator pins, and the loader
  checks the files are still the ones hashed (a tampered artifact never starts). ``edgekit serve``
  exits non-zero when the load fails.
- A full queue answers 429 with ``Retry-After``; a request older than ``timeout_s`` answers 504 (a
  stream ends with an error event) and its work stops; a client that disconnects cancels its
  work; SIGTERM stops accepting connections, finishes the requests in flight (uvicorn's graceful
  shutdown), then answers what is queued and closes the runner.
- Refusals come before work (:mod:`edgekit.serve.gate`): a Host outside the allow-list (loopback
  names by default) gets 400, a missing or wrong ``api_key`` 401, a body over ``max_body_bytes``
  413 from its headers; a prompt with more characters than the context could hold tokens gets 413
  before it is tokenized, and tokenizing runs off the event loop, so ``/health`` keeps answering.
  ``/health`` shows no paths and no exception text (those go to the server log).
- ``GET /metrics`` is Prometheus text (``prometheus-client``): requests by endpoint and outcome,
  latency, time-to-first-token and queue-wait histograms, generated tokens and decode tokens/s,
  queue depth, readiness, resident memory (the standard ``process_*`` metrics) and its high-water.
"""
from __future__ import annotations

import asyncio
import json
import logging
import math
import queue
import resource
import threading
import time
import uuid
from collections import deque
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Callable, Iterator, Literal

import numpy as np
import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr
from starlette.middleware.trustedhost import TrustedHostMiddleware

from edgekit.artifacts.manifest import read_manifest, verify_artifact
from edgekit.core.errors import ArtifactError
from edgekit.measure.peak_memory import rss_breakdown
from edgekit.memory.profiles import load_profile
from edgekit.runtimes import load_artifact, runtime_loader
from edgekit.serve.engine import Engine, Job, QueueFull, TextStream
from edgekit.serve.gate import LOOPBACK_HOSTS, MAX_BODY_BYTES, RequestGate, allowed_hosts
from edgekit.serve.logprobs import MAX_TOP_LOGPROBS, ScoredJob, token_prompt

MAX_NEW_TOKENS = 256
LATENCY_WINDOW = 10_000  # latencies kept for /health's percentiles (the most recent ones)
RETRY_WHILE_LOADING_S = 5
OUTCOMES = ("ok", "rejected", "queue_full", "unavailable", "timeout", "cancelled", "error")
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
FALLBACK_CHAT_STOPS = ("\nuser:", "\nsystem:")
log = logging.getLogger("uvicorn.error")  # uvicorn configures it: server messages land in one log


class APIError(Exception):
    """A request answered with an error: HTTP status, one-line message, and its outcome for the metrics."""

    def __init__(self, status: int, message: str, outcome: str = "rejected", code: str | None = None,
                 headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.outcome, self.code, self.headers = status, message, outcome, code, headers


# ---------------------------------------------------------------- request bodies
class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: StrictStr = Field(min_length=1, description="text to continue")
    max_new_tokens: StrictInt = Field(32, ge=1, description="tokens to generate")


class StreamOptions(BaseModel):
    include_usage: StrictBool = False


class _OpenAIRequest(BaseModel):
    """The sampling settings both OpenAI endpoints share; fields this server does not use are ignored."""

    model_config = ConfigDict(extra="ignore")
    model: StrictStr
    max_tokens: StrictInt | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    stop: StrictStr | Annotated[list[StrictStr], Field(max_length=4)] | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    seed: StrictInt | None = Field(None, ge=0, le=2**63 - 1)
    n: StrictInt = Field(1, ge=1, le=1, description="one choice per request")

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class CompletionRequest(_OpenAIRequest):
    prompt: StrictStr | list[StrictInt] | list[list[StrictInt]] = Field(min_length=1)
    logprobs: StrictInt | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: StrictBool = False


class TextPart(BaseModel):
    type: Literal["text"]
    text: StrictStr


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: StrictStr | list[TextPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatRequest(_OpenAIRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: StrictInt | None = Field(None, ge=1)


# ---------------------------------------------------------------- metrics
class Metrics:
    """The server's Prometheus metrics, in a registry of its own (several apps may share a process)."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        ProcessCollector(registry=r)  # process_resident_memory_bytes, process_cpu_seconds_total, ...
        self.requests = Counter("edgekit_requests", "HTTP requests by endpoint and outcome", ["endpoint", "outcome"],
                                registry=r)
        self.latency = Histogram("edgekit_request_duration_seconds", "arrival to last token, answered requests",
                                 ["endpoint"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.ttft = Histogram("edgekit_time_to_first_token_seconds", "arrival to first generated token",
                              ["endpoint"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.queue_wait = Histogram("edgekit_queue_wait_seconds", "arrival to the worker taking the request",
                                    buckets=LATENCY_BUCKETS_S, registry=r)
        self.decode_rate = Histogram("edgekit_decode_tokens_per_second", "tokens/s after the first token, per request",
                                     buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500), registry=r)
        self.generated = Counter("edgekit_generated_tokens", "tokens generated (cancelled work included)", registry=r)
        self.prompt_tokens = Counter("edgekit_prompt_tokens", "prompt tokens of the requests the worker took",
                                     registry=r)
        self.queue_depth = Gauge("edgekit_queue_depth", "requests admitted and not finished", registry=r)
        self.queue_capacity = Gauge("edgekit_queue_capacity", "requests admitted at most", registry=r)
        self.ready = Gauge("edgekit_ready", "1 when /health/ready answers 200", registry=r)
        self.peak_rss = Gauge("edgekit_peak_resident_memory_bytes", "high-water mark of resident memory", registry=r)
        self.budget = Gauge("edgekit_memory_budget_bytes", "the memory budget readiness is judged against",
                            registry=r)

    def counts(self) -> dict:
        totals = dict.fromkeys(OUTCOMES, 0)
        for family in self.requests.collect():
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    totals[sample.labels["outcome"]] += int(sample.value)
        return {"received": sum(totals.values()), **totals}


# ---------------------------------------------------------------- the server
class Server:
    """Everything one served artifact holds: settings, engine, runner once loaded, metrics and state."""

    def __init__(self, artifact_dir: str | Path, *, max_batch: int, max_wait_ms: float, max_new_tokens: int,
                 max_prompt_tokens: int | None, max_queue: int, timeout_s: float, device: str | Path | None,
                 expect_checksum: str | None = None) -> None:
        self.artifact_dir = Path(artifact_dir)
        max_opset = runtime_loader(read_manifest(self.artifact_dir).runtime)[1]()
        self.manifest = verify_artifact(self.artifact_dir, max_opset, expect_checksum)  # hashed once, here
        self.model_id = self.manifest.variant
        self.max_new_tokens, self.timeout_s = max_new_tokens, timeout_s
        self.context = max_prompt_tokens or _context_length(self.artifact_dir)
        self.budget_bytes, self.budget_from = _memory_budget(device)
        self.metrics = Metrics()
        self.engine = Engine(max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue,
                             on_finished=self._finished)
        self.runner = None
        self.max_token_chars: int | None = None  # characters of the longest token: the prompt precheck
        self.phase = "loading"  # loading -> warming up -> ready | failed
        self.on_failed: Callable[[], None] = lambda: None
        self.load_error: str | None = None
        self.last_error: str | None = None
        self.latencies_s: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self.started = time.time()
        self._loader = threading.Thread(target=self._load, name="edgekit-load", daemon=True)
        m = self.metrics
        m.queue_depth.set_function(lambda: self.engine.pending)
        m.queue_capacity.set(max_queue)
        m.ready.set_function(lambda: float(self.not_ready() is None))
        m.peak_rss.set_function(lambda: _memory_now()[1])
        m.budget.set(self.budget_bytes)
        data = self.manifest.data
        self.artifact_info = {"variant": self.model_id,
                              "runtime": data["runtime"], "schema_version": data["schema_version"],
                              "edgekit_version": data.get("edgekit_version"), "created": data.get("created"),
                              "checksum": self.manifest.checksum, "runtime_settings": data.get("runtime_settings", {})}

    # ------------------------------------------------------------ life cycle
    def start(self) -> None:
        self._loader.start()

    def _load(self) -> None:
        try:
            # llama.cpp holds a KV cache of n_ctx tokens: the context this server admits
            options = {"n_ctx": self.context} if self.manifest.runtime == "llama.cpp" else {}
            self.runner = load_artifact(self.manifest, **options)  # not hashed again: checked unchanged
            self.max_token_chars = max((len(t) for t in self.runner.tokenizer.get_vocab()), default=1) or 1
            self.engine.runner = self.runner
            self.phase = "warming up"
            self._warm_up()
            self.phase = "ready"
            log.info("edgekit: %s loaded and warmed up; ready", self.model_id)
        except Exception as exc:  # noqa: BLE001 - the process stays up to say why in /health
            self.load_error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            self.last_error = f"the model failed to load ({type(exc).__name__}); see the server log"
            self.phase = "failed"
            log.error("edgekit: could not load %s: %s", self.artifact_dir, self.load_error)
            self.on_failed()

    def _warm_up(self) -> None:
        """One short greedy request through the worker, as any request goes."""

        events: queue.Queue = queue.Queue()
        ids = self.runner.tokenizer("Hello", return_tensors="pt", add_special_tokens=False)["input_ids"]
        self.engine.submit(Job(ids, 2, TextStream(self.runner.tokenizer), deliver=events.put))
        while (event := events.get(timeout=max(self.timeout_s, 60)))[0] == "text":
            pass
        if event[0] != "done":
            raise RuntimeError(f"the warm-up request ended with {event[0]}: {event[1]}")

    def close(self) -> None:
        """After the last request: answer whatever is queued, then free the runner."""
        self._loader.join()
        self.engine.close()
        if self.runner is not None:
            self.runner.close()
        counts = self.metrics.counts()
        log.info("edgekit: stopped after %d requests (%d answered)", counts["received"], counts["ok"])

    # ------------------------------------------------------------ health
    def not_ready(self) -> str | None:
        """Why this replica should not get traffic now (None: it should)."""
        if self.phase == "failed":
            return "the model failed to load; see the server log"
        if self.phase != "ready":
            return f"{self.phase} the model"
        if not self.engine.batcher.alive:
            return "the worker has stopped (shutting down)"
        rss, _ = _memory_now()
        if rss > self.budget_bytes:
            return f"resident memory {rss / 2**30:.2f} GiB is over the {self.budget_bytes / 2**30:.2f} GiB budget"
        return None

    def health(self) -> dict:
        reason = self.not_ready()
        depth, capacity = self.engine.pending, self.engine.max_queue
        overloaded = depth >= capacity
        status = self.phase if self.phase != "ready" else ("overloaded" if overloaded else "ok")
        rss, peak = _memory_now()
        sizes = self.engine.batcher.batch_sizes
        return {"status": status, "live": self.engine.batcher.alive, "ready": reason is None, "not_ready": reason,
                "artifact": self.artifact_info, "requests": self.metrics.counts(), "last_error": self.last_error,
                "latency_ms": _percentiles_ms(self.latencies_s),
                "queue": {"depth": depth, "capacity": capacity, "overloaded": overloaded},
                "memory": {"rss_bytes": rss, "peak_rss_bytes": peak, "budget_bytes": self.budget_bytes,
                           "budget_from": self.budget_from, "pressure": rss / self.budget_bytes,
                           "peak_pressure": peak / self.budget_bytes, "over_budget": rss > self.budget_bytes},
                "batcher": {"max_batch": self.engine.batcher.max_batch,
                            "max_wait_ms": self.engine.batcher.max_wait_s * 1000, "batches": len(sizes),
                            "mean_batch_size": sum(sizes) / len(sizes) if sizes else None},
                "uptime_s": time.time() - self.started}

    def retry_after_s(self) -> int:
        """A client's wait before retrying a full queue: the median answer time, 1 s at least."""
        p50 = np.median(self.latencies_s) if self.latencies_s else 1.0
        return max(1, math.ceil(p50))

    # ------------------------------------------------------------ requests
    def record(self, endpoint: str, outcome: str, job: Job | None = None, error: str | None = None) -> None:
        """Count one finished request; an answered one also gives its latencies."""
        m = self.metrics
        m.requests.labels(endpoint, outcome).inc()
        if error:
            self.last_error = error
            log.error("edgekit: %s failed: %s", endpoint, error)
        if outcome == "ok" and job is not None:
            latency = time.perf_counter() - job.arrived
            self.latencies_s.append(latency)
            m.latency.labels(endpoint).observe(latency)
            if job.first_token_at is not None:
                m.ttft.labels(endpoint).observe(job.first_token_at - job.arrived)
                decode_s = job.finished_at - job.first_token_at
                if job.new_tokens > 1 and decode_s > 0:
                    m.decode_rate.observe((job.new_tokens - 1) / decode_s)

    def _finished(self, job: Job) -> None:
        """Called by the worker for every job it lets go, answered or not: the work it did."""
        self.metrics.generated.inc(job.new_tokens)
        self.metrics.prompt_tokens.inc(job.ids.shape[1])
        if job.started is not None:
            self.metrics.queue_wait.observe(job.started - job.arrived)

    def tokenizer(self):
        """The runner's tokenizer; raises 503 while the model is not loaded."""
        if self.phase != "ready":
            message = ("the model failed to load; see the server log" if self.phase == "failed"
                       else f"the server is {self.phase} the model; retry in a few seconds")
            raise APIError(503, message, "unavailable", headers={"Retry-After": str(RETRY_WHILE_LOADING_S)})
        return self.runner.tokenizer

    def prompt_ids(self, text: str, max_new_tokens: int):
        tokenizer = self.tokenizer()
        if max_new_tokens > self.max_new_tokens:
            raise APIError(422, f"{max_new_tokens} new tokens is over this server's limit of {self.max_new_tokens}; "
                                "ask for fewer")
        if len(text) > (self.context - max_new_tokens) * self.max_token_chars:  # no tokenizing what cannot fit
            raise APIError(413, f"prompt of {len(text)} characters cannot fit the {self.context}-token context with "
                                f"{max_new_tokens} new tokens; shorten the prompt or ask for fewer tokens",
                           code="context_length_exceeded")
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
        if ids.shape[1] == 0 or not text.strip():
            raise APIError(422, "the prompt is empty after tokenization; send some text to continue")
        if ids.shape[1] + max_new_tokens > self.context:
            raise APIError(413, f"prompt ({ids.shape[1]} tokens) plus {max_new_tokens} new tokens exceeds the "
                                f"{self.context}-token context; shorten the prompt or ask for fewer tokens",
                           code="context_length_exceeded")
        return ids

    async def prompt_ids_async(self, text: str, max_new_tokens: int):
        """:meth:`prompt_ids` in a worker thread: a long prompt's tokenizing never stalls the event loop."""
        self.tokenizer()
        return await asyncio.to_thread(self.prompt_ids, text, max_new_tokens)

    def submit(self, job: Job) -> None:
        try:
            self.engine.submit(job)
        except QueueFull as exc:
            raise APIError(429, str(exc), "queue_full", headers={"Retry-After": str(self.retry_after_s())}) from None
        except RuntimeError:
            raise APIError(503, "the server is shutting down; send the request to another replica",
                           "unavailable") from None

    def failure(self, kind: str, value: object) -> APIError:
        """The error a job's non-``done`` ending is answered with."""
        if kind == "timeout":
            return APIError(504, f"no answer within this server's {self.timeout_s:g} s limit; ask for fewer tokens "
                                 "or retry", "timeout")
        if kind in ("gone", "cancelled"):
            return APIError(499, "the client closed the connection", "cancelled")
        log.error("edgekit: generation failed: %s: %s", type(value).__name__, value)
        return APIError(500, f"generation failed ({type(value).__name__}); see the server log", "error")


def create_app(artifact_dir: str | Path, *, max_batch: int = 8, max_wait_ms: float = 10.0,
               max_new_tokens: int = MAX_NEW_TOKENS, max_prompt_tokens: int | None = None, max_queue: int = 64,
               timeout_s: float = 60.0, device: str | Path | None = None, expect_checksum: str | None = None,
               api_key: str | None = None, hosts: list[str] | None = None,
               max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """The FastAPI app serving ``artifact_dir``; raises ArtifactError now if the artifact fails verification
    (or its checksum is not ``expect_checksum``).

    The model loads on a side thread once the app starts (``/health/ready`` says when).
    ``max_queue`` bounds the requests waiting or decoding, ``timeout_s`` each request's time from
    arrival to its last token, and ``device`` (a profile name or file, default this machine) the
    memory budget of readiness. ``api_key`` (bearer), ``hosts`` (the Host names answered, default
    loopback ones; ``*`` any) and ``max_body_bytes`` are checked before a body is read
    (:mod:`edgekit.serve.gate`).
    """
    server = Server(artifact_dir, max_batch=max_batch, max_wait_ms=max_wait_ms, max_new_tokens=max_new_tokens,
                    max_prompt_tokens=max_prompt_tokens, max_queue=max_queue, timeout_s=timeout_s, device=device,
                    expect_checksum=expect_checksum)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        server.start()
        yield
        await asyncio.to_thread(server.close)

    app = FastAPI(title="edgekit", description=f"serving {server.model_id}", lifespan=lifespan)
    app.state.server, app.state.batcher = server, server.engine.batcher
    app.add_middleware(RequestGate, max_body_bytes=max_body_bytes, api_key=api_key,
                       on_refused=lambda path, status: server.metrics.requests.labels(path, "rejected").inc())
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(hosts or LOOPBACK_HOSTS))  # outermost: runs first

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        reasons = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in exc.errors())
        return await api_error(request, APIError(422, f"bad request: {reasons}"))

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError):
        endpoint = request.url.path
        server.record(endpoint, exc.outcome, error=exc.message if exc.outcome == "error" else None)
        if endpoint.startswith("/v1/"):  # OpenAI's shape: invalid requests are 400s
            status = 400 if exc.status in (413, 422) else exc.status
            return JSONResponse(_openai_error(exc), status_code=status, headers=exc.headers)
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)

    # ------------------------------------------------------------ health and metrics
    @app.get("/health")
    async def health():
        return server.health()

    @app.get("/health/live")
    async def live():
        alive = server.engine.batcher.alive
        return JSONResponse({"live": alive}, status_code=200 if alive else 503)

    @app.get("/health/ready")
    async def ready():
        reason = server.not_ready()
        return JSONResponse({"ready": reason is None, "reason": reason}, status_code=200 if reason is None else 503)

    @app.get("/metrics")
    async def metrics():
        return Response(generate_latest(server.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # ------------------------------------------------------------ edgekit's own API
    @app.post("/generate")
    async def generate(body: GenerateRequest, request: Request):
        ids = await server.prompt_ids_async(body.prompt, body.max_new_tokens)
        job, events = _job(ids, body.max_new_tokens, TextStream(server.runner.tokenizer))
        await _answer(server, request, job, events)
        server.record("/generate", "ok", job)
        tokens = job.text.tokens
        return {"text": server.runner.tokenizer.decode(tokens, skip_special_tokens=True), "tokens": tokens,
                "new_tokens": len(tokens), "latency_ms": (time.perf_counter() - job.arrived) * 1000}

    # ------------------------------------------------------------ OpenAI's API
    @app.get("/v1/models")
    async def models():
        created = _epoch(server.artifact_info["created"])
        return {"object": "list", "data": [{"id": server.model_id, "object": "model", "created": created,
                                            "owned_by": "edgekit"}]}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        _check_model(server, body.model)
        max_tokens = body.max_tokens or 16  # OpenAI's default for completions
        if isinstance(body.prompt, str):
            ids = await server.prompt_ids_async(body.prompt, max_tokens)
        else:  # token ids, as lm-eval's local-completions sends them: the server's limits, then the ids as sent
            ids = token_prompt(body.prompt, len(server.tokenizer()))
            if ids is None:
                raise APIError(422, "a prompt of token ids must be one non-empty list of ids in the vocabulary")
            await server.prompt_ids_async(server.tokenizer().decode(ids[0]), max_tokens)
        if (body.logprobs is not None or body.echo) and (body.stream or body.temperature > 0):
            raise APIError(422, "logprobs and echo are given for greedy answers sent whole (temperature 0, "
                                "stream false)")
        return await _openai(server, request, body, ids, max_tokens, body.stops(), chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        _check_model(server, body.model)
        tokenizer = server.tokenizer()
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        if getattr(tokenizer, "chat_template", None):
            prompt, stops = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True), []
        else:
            prompt = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
            stops = list(FALLBACK_CHAT_STOPS)
        asked = body.max_completion_tokens or body.max_tokens
        if asked:
            max_tokens, ids = asked, await server.prompt_ids_async(prompt, asked)
        else:  # as many as fit: the prompt checked with one new token, then the rest of the context
            ids = await server.prompt_ids_async(prompt, 1)
            max_tokens = max(1, min(server.max_new_tokens, server.context - ids.shape[1]))
        return await _openai(server, request, body, ids, max_tokens, body.stops() + stops, chat=True)

    return app


# ---------------------------------------------------------------- handlers' helpers
def _job(ids, max_new_tokens: int, text: TextStream, job_class: type[Job] = Job,
         **sampling) -> tuple[Job, asyncio.Queue]:
    """A job whose events land in an asyncio queue of the running loop."""
    loop, events = asyncio.get_running_loop(), asyncio.Queue()

    def deliver(event) -> None:
        try:
            loop.call_soon_threadsafe(events.put_nowait, event)
        except RuntimeError:  # the loop has closed: nobody waits for this request any more
            pass

    return job_class(ids, max_new_tokens, text, deliver=deliver, **sampling), events


def _expire(job: Job, events: asyncio.Queue) -> None:
    job.cancel()
    events.put_nowait(("timeout", None))


async def _cancel_when_gone(request: Request, job: Job, events: asyncio.Queue) -> None:
    """Wait for the client to hang up (the body is read: the next ASGI message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    job.cancel()
    events.put_nowait(("gone", None))


async def _answer(server: Server, request: Request, job: Job, events: asyncio.Queue) -> tuple[str, str]:
    """Submit ``job`` and wait for its whole answer: (text, finish_reason); cancelled on timeout or hang-up."""
    server.submit(job)
    timer = asyncio.get_running_loop().call_later(server.timeout_s, _expire, job, events)
    watcher = asyncio.create_task(_cancel_when_gone(request, job, events))
    pieces = []
    try:
        while True:
            kind, value = await events.get()
            if kind == "text":
                pieces.append(value)
            elif kind == "done":
                return "".join(pieces), value
            else:
                raise server.failure(kind, value)
    finally:
        timer.cancel()
        watcher.cancel()
        job.cancel()


def _check_model(server: Server, model: str) -> None:
    if model != server.model_id:
        raise APIError(404, f"this server serves {server.model_id!r}, not {model!r}; see GET /v1/models",
                       code="model_not_found")


async def _openai(server: Server, request: Request, body: _OpenAIRequest, ids, max_tokens: int, stops: list[str],
                  chat: bool):
    endpoint = request.url.path
    text = TextStream(server.runner.tokenizer, stops, server.runner.tokenizer.eos_token_id)
    scored = {"job_class": ScoredJob, "top": body.logprobs or 0, "echo": body.echo} \
        if not chat and (body.logprobs is not None or body.echo) else {}
    job, events = _job(ids, max_tokens, text, temperature=body.temperature, top_p=body.top_p, seed=body.seed,
                       stream=body.stream, **scored)
    head = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
            "object": "chat.completion.chunk" if body.stream and chat else "chat.completion" if chat
            else "text_completion", "created": int(time.time()), "model": server.model_id}
    if not body.stream:
        answer, finish = await _answer(server, request, job, events)
        server.record(endpoint, "ok", job)
        choice = ({"message": {"role": "assistant", "content": answer}} if chat else {"text": answer,
                                                                                      "logprobs": None})
        if isinstance(job, ScoredJob):
            prompt = server.tokenizer().decode(ids[0]) if not isinstance(body.prompt, str) else body.prompt
            choice = {"text": prompt + answer if job.echo else answer, "logprobs": job.logprobs(server.tokenizer())}
        return {**head, "choices": [{"index": 0, **choice, "finish_reason": finish}], "usage": _usage(job)}

    def chunk(piece: str = "", finish: str | None = None, role: bool = False) -> dict:
        delta = ({"role": "assistant", "content": piece} if role else {"content": piece} if piece else {}) if chat \
            else {"text": piece, "logprobs": None}
        return {**head, "choices": [{"index": 0, **({"delta": delta} if chat else delta), "finish_reason": finish}]}

    server.submit(job)
    timer = asyncio.get_running_loop().call_later(server.timeout_s, _expire, job, events)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return StreamingResponse(_sse(server, endpoint, job, events, timer, chunk, chat, include_usage),
                             media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def _sse(server: Server, endpoint: str, job: Job, events: asyncio.Queue, timer: asyncio.TimerHandle,
               chunk: Callable[..., dict], chat: bool, include_usage: bool):
    """Server-sent events of one streamed answer. A hang-up cancels this generator (Starlette listens
    for the disconnect while it streams), which cancels the job."""
    outcome, error = "cancelled", None
    try:
        if chat:
            yield _event(chunk(role=True))
        while True:
            kind, value = await events.get()
            if kind == "text":
                yield _event(chunk(value))
                continue
            if kind == "done":
                yield _event(chunk(finish=value))
                if include_usage:
                    yield _event({**chunk(), "choices": [], "usage": _usage(job)})
                yield "data: [DONE]\n\n"
                outcome = "ok"
                return
            failure = server.failure(kind, value)  # headers are sent: the error travels as an event
            outcome, error = failure.outcome, failure.message if failure.outcome == "error" else None
            yield _event(_openai_error(failure))
            return
    finally:
        timer.cancel()
        job.cancel()
        server.record(endpoint, outcome, job, error)


def _event(data: dict) -> str:
    return f"data: {json.dumps(data)}\n\n"


def _usage(job: Job) -> dict:
    prompt = int(job.ids.shape[1])
    return {"prompt_tokens": prompt, "completion_tokens": job.new_tokens, "total_tokens": prompt + job.new_tokens}


def _openai_error(exc: APIError) -> dict:
    kind = {400: "invalid_request_error", 404: "invalid_request_error", 413: "invalid_request_error",
            422: "invalid_request_error", 429: "rate_limit_exceeded", 503: "service_unavailable",
            504: "timeout"}.get(exc.status, "server_error")
    return {"error": {"message": exc.message, "type": kind, "param": None, "code": exc.code or kind}}


def _percentiles_ms(seconds) -> dict:
    """P50/P95/P99 in ms; null before the first answer (JSON has no NaN)."""
    ms = np.asarray(seconds, dtype=float) * 1000
    return {f"latency_ms_p{q}": float(np.percentile(ms, q)) if ms.size else None for q in (50, 95, 99)}


def _epoch(created: str | None) -> int:

    return int(datetime.fromisoformat(created).timestamp()) if created else 0


def _memory_now() -> tuple[int, int]:
    """Resident memory now and its high-water mark since the process started."""
    now = rss_breakdown()["rss_bytes"]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return now, max(now, peak)


def _memory_budget(device: str | Path | None) -> tuple[int, str]:
    """The host memory this server may hold: a device profile's host budget, or this machine's.

    ``this-machine`` is the RAM available now less a margin; this process already holds its
    resident memory, so that is added back.
    """
    profile = load_profile(device or "this-machine")
    budget = profile.host_budget + (_memory_now()[0] if profile.name == "this-machine" else 0)
    return budget, profile.name


def _context_length(folder: Path, fallback: int = 1024) -> int:
    """The model's context (``max_position_embeddings`` in the artifact's config.json)."""
    config = folder / "config.json"
    if config.exists():
        return int(json.loads(config.read_text()).get("max_position_embeddings") or fallback)
    return fallback


# ---------------------------------------------------------------- running it
def uvicorn_config(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> uvicorn.Config:
    """uvicorn's settings for an edgekit app: on shutdown, requests in flight get up to their timeout to finish."""
    return uvicorn.Config(app, host=host, port=port, log_level=log_level,
                          timeout_graceful_shutdown=app.state.server.timeout_s + 5)


def serve(artifact_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, allowed: list[str] | None = None,
          **settings) -> None:
    """Verify ``artifact_dir`` and serve it until SIGINT/SIGTERM (``edgekit serve``); settings as :func:`create_app`.

    Host names answered: loopback ones, ``host`` itself and ``allowed``. Raises ArtifactError (the
    CLI exits 2) when the model fails to load, after the server has stopped."""
    app = create_app(artifact_dir, hosts=allowed_hosts(host, allowed), **settings)
    server = uvicorn.Server(uvicorn_config(app, host, port))
    state: Server = app.state.server
    state.on_failed = lambda: setattr(server, "should_exit", True)
    server.run()
    if state.phase == "failed":
        raise ArtifactError(f"the server stopped: it could not load the artifact ({state.load_error})")


@contextmanager
def serve_in_background(app: FastAPI, host: str = "127.0.0.1", port: int = 0,
                        wait_s: float = 300.0) -> Iterator[str]:
    """Run ``app`` with uvicorn in a thread (notebooks, tests, benchmarks); yields its URL once it is ready.

    ``port=0`` takes a free port. Leaving the block shuts the server down gracefully.
    """
    server = uvicorn.Server(uvicorn_config(app, host, port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="edgekit-uvicorn", daemon=True)
    thread.start()
    state: Server = app.state.server
    deadline = time.monotonic() + wait_s
    try:
        while not (server.started and state.phase in ("ready", "failed")):
            if time.monotonic() > deadline or not thread.is_alive():
                raise ArtifactError(f"the server did not start within {wait_s:g} s; see its log")
            time.sleep(0.02)
        if state.phase == "failed":
            raise ArtifactError(f"the server could not load the artifact: {state.load_error}")
        yield f"http://{host}:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join()
