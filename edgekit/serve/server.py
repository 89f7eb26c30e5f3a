"""The state behind the server's routes: the loaded artifact and its engine (loaded once, verified once),
its limits and memory budget, and the Prometheus metrics and latency window /health reports.
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
from collections import deque
from pathlib import Path
from typing import Callable

import numpy as np
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
)

from edgekit.artifacts.manifest import read_manifest, verify_artifact
from edgekit.measure.peak_memory import rss_breakdown
from edgekit.memory.profiles import load_profile
from edgekit.runtimes import load_artifact, runtime_loader
from edgekit.serve.engine import Engine, Job, QueueFull, TextStream
from edgekit.serve.openai import (
    APIError,
)

MAX_NEW_TOKENS = 256

log = logging.getLogger("uvicorn.error")  # uvicorn configures it: server messages land in one log


LATENCY_WINDOW = 10_000  # latencies kept for /health's percentiles (the most recent ones)


RETRY_WHILE_LOADING_S = 5


OUTCOMES = ("ok", "rejected", "queue_full", "unavailable", "timeout", "cancelled", "error")


LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


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


def _percentiles_ms(seconds) -> dict:
    """P50/P95/P99 in ms; null before the first answer (JSON has no NaN)."""
    ms = np.asarray(seconds, dtype=float) * 1000
    return {f"latency_ms_p{q}": float(np.percentile(ms, q)) if ms.size else None for q in (50, 95, 99)}


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
