"""A verified artifact behind a small HTTP server: ``POST /generate`` and ``GET /health``.

Built on FastAPI and uvicorn (the FastAPI "Deployment" and "Handling errors" guides).
The artifact is verified when the app is created (:func:`edgekit.artifact.load_artifact`
checks every file's sha256, the schema and the opset), so a tampered or incomplete
artifact never starts serving. Requests go through a :class:`~edgekit.batching.DynamicBatcher`
(up to ``max_batch`` per batch, at most ``max_wait_ms`` waiting for company) so concurrent
clients share decode steps. Bad requests (wrong types, empty prompt, too many tokens) get
a 4xx with the reason, and the server keeps serving. ``/health`` reports the artifact's
variant, version and checksum, resident memory now and its high-water mark, request
counts, errors, and P50/P95/P99 latency since start — what a load balancer or an on-call
engineer needs to decide whether this replica is well.
"""
from __future__ import annotations

import asyncio
import resource
import threading
import time
from collections import deque
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from edgekit.batching import generation_batcher, percentiles_ms
from edgekit.memory import rss_breakdown

MAX_NEW_TOKENS = 256
LATENCY_WINDOW = 100_000  # latencies kept for the percentiles (the most recent ones)


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: StrictStr = Field(min_length=1, description="text to continue")
    max_new_tokens: StrictInt = Field(32, ge=1, description="tokens to generate")


class ServerStats:
    """Counts and latencies since start, safe to update from several request handlers."""

    def __init__(self) -> None:
        self.started = time.time()
        self.lock = threading.Lock()
        self.counts = {"received": 0, "ok": 0, "rejected": 0, "errors": 0}
        self.latencies_s: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self.last_error: str | None = None

    def count(self, key: str, latency_s: float | None = None, error: str | None = None) -> None:
        with self.lock:
            self.counts[key] += 1
            if latency_s is not None:
                self.latencies_s.append(latency_s)
            if error:
                self.last_error = error

    def snapshot(self) -> dict:
        with self.lock:
            return {"requests": dict(self.counts), "last_error": self.last_error,
                    "latency_ms": percentiles_ms(list(self.latencies_s)), "uptime_s": time.time() - self.started}


def create_app(artifact_dir: str | Path, *, max_batch: int = 8, max_wait_ms: float = 10.0,
               max_new_tokens: int = MAX_NEW_TOKENS, max_prompt_tokens: int | None = None) -> FastAPI:
    """The FastAPI app serving ``artifact_dir``; raises ArtifactError now if the artifact fails verification."""
    from edgekit.artifact import load_artifact, read_manifest

    runner = load_artifact(artifact_dir)
    manifest = read_manifest(artifact_dir)
    if max_prompt_tokens is None:
        max_prompt_tokens = _context_length(Path(artifact_dir))
    batcher = generation_batcher(runner, max_batch, max_wait_ms)
    stats = ServerStats()
    artifact_info = {"path": str(Path(artifact_dir).resolve()), "variant": manifest.variant,
                     "runtime": manifest.data["runtime"], "schema_version": manifest.data["schema_version"],
                     "edgekit_version": manifest.data.get("edgekit_version"), "created": manifest.data.get("created"),
                     "checksum": manifest.checksum, "runtime_settings": manifest.data.get("runtime_settings", {})}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        batcher.close()
        runner.close()

    app = FastAPI(title="edgekit", description=f"serving {manifest.variant}", lifespan=lifespan)
    app.state.stats, app.state.batcher, app.state.runner = stats, batcher, runner

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        reasons = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in exc.errors())
        stats.count("received")
        stats.count("rejected")
        return JSONResponse(status_code=422, content={"error": f"bad request: {reasons}"})

    @app.post("/generate")
    async def generate(body: GenerateRequest):
        stats.count("received")
        start = time.perf_counter()
        if body.max_new_tokens > max_new_tokens:
            stats.count("rejected")
            raise HTTPException(422, f"max_new_tokens={body.max_new_tokens} is over this server's limit of "
                                     f"{max_new_tokens}; ask for fewer")
        ids = runner.tokenizer(body.prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
        if ids.shape[1] == 0 or not body.prompt.strip():
            stats.count("rejected")
            raise HTTPException(422, "the prompt is empty after tokenization; send some text to continue")
        if ids.shape[1] + body.max_new_tokens > max_prompt_tokens:
            stats.count("rejected")
            raise HTTPException(413, f"prompt ({ids.shape[1]} tokens) plus max_new_tokens exceeds the "
                                     f"{max_prompt_tokens}-token context; shorten the prompt")
        try:
            tokens = await asyncio.wrap_future(batcher.submit((ids, body.max_new_tokens)))
        except Exception as exc:  # noqa: BLE001 - reported to the client and in /health; the server goes on
            stats.count("errors", error=f"{type(exc).__name__}: {exc}")
            raise HTTPException(500, f"generation failed: {type(exc).__name__}: {exc}") from None
        latency = time.perf_counter() - start
        stats.count("ok", latency_s=latency)
        return {"text": runner.tokenizer.decode(tokens, skip_special_tokens=True), "tokens": tokens,
                "new_tokens": len(tokens), "latency_ms": latency * 1000}

    @app.get("/health")
    async def health():
        snap = stats.snapshot()
        sizes = batcher.batch_sizes
        return {"status": "ok", "artifact": artifact_info, **snap,
                "memory": _memory(),
                "batcher": {"max_batch": batcher.max_batch, "max_wait_ms": batcher.max_wait_s * 1000,
                            "batches": len(sizes), "mean_batch_size": sum(sizes) / len(sizes) if sizes else None}}

    return app


def _memory() -> dict:
    """Resident memory now and its high-water mark since the process started."""
    now = rss_breakdown()["rss_bytes"]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return {"rss_bytes": now, "peak_rss_bytes": max(now, peak)}


def _context_length(folder: Path, fallback: int = 1024) -> int:
    """The model's context (``max_position_embeddings`` in the artifact's config.json)."""
    import json

    config = folder / "config.json"
    if config.exists():
        return int(json.loads(config.read_text()).get("max_position_embeddings") or fallback)
    return fallback


def serve(artifact_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, max_batch: int = 8,
          max_wait_ms: float = 10.0) -> None:
    """Verify ``artifact_dir`` and serve it with uvicorn until interrupted (``edgekit serve``)."""
    import uvicorn

    app = create_app(artifact_dir, max_batch=max_batch, max_wait_ms=max_wait_ms)
    uvicorn.run(app, host=host, port=port, log_level="info")
