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
import logging
import threading
import time
import uuid
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Callable, Iterator

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    generate_latest,
)
from starlette.middleware.trustedhost import TrustedHostMiddleware

from edgekit.core.errors import ArtifactError
from edgekit.serve.engine import Job, TextStream
from edgekit.serve.gate import LOOPBACK_HOSTS, MAX_BODY_BYTES, RequestGate, allowed_hosts
from edgekit.serve.logprobs import ScoredJob, token_prompt
from edgekit.serve.openai import (
    APIError,
    ChatRequest,
    CompletionRequest,
    GenerateRequest,
    OpenAIRequest,
    epoch,
    event,
    openai_error,
    usage,
)
from edgekit.serve.server import MAX_NEW_TOKENS, Server

FALLBACK_CHAT_STOPS = ("\nuser:", "\nsystem:")


log = logging.getLogger("uvicorn.error")  # uvicorn configures it: server messages land in one log


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
            return JSONResponse(openai_error(exc), status_code=status, headers=exc.headers)
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
        created = epoch(server.artifact_info["created"])
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


async def _openai(server: Server, request: Request, body: OpenAIRequest, ids, max_tokens: int, stops: list[str],
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
        return {**head, "choices": [{"index": 0, **choice, "finish_reason": finish}], "usage": usage(job)}

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
            yield event(chunk(role=True))
        while True:
            kind, value = await events.get()
            if kind == "text":
                yield event(chunk(value))
                continue
            if kind == "done":
                yield event(chunk(finish=value))
                if include_usage:
                    yield event({**chunk(), "choices": [], "usage": usage(job)})
                yield "data: [DONE]\n\n"
                outcome = "ok"
                return
            failure = server.failure(kind, value)  # headers are sent: the error travels as an event
            outcome, error = failure.outcome, failure.message if failure.outcome == "error" else None
            yield event(openai_error(failure))
            return
    finally:
        timer.cancel()
        job.cancel()
        server.record(endpoint, outcome, job, error)


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
