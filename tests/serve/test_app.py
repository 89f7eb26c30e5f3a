"""The server on 127.0.0.1: edgekit's /generate, health in every state, /metrics, a tampered artifact refused."""
import json
import shutil
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from edgekit.core.errors import ArtifactError
from edgekit.serve.app import create_app, serve_in_background

VARIANT = "onnx-int4-g32"


def strict_json(response: httpx.Response) -> dict:
    """The body as JSON, refusing NaN and Infinity (which JSON does not have)."""
    def refuse(constant):
        raise ValueError(f"{constant} in {response.request.url.path}")
    return json.loads(response.text, parse_constant=refuse)


@pytest.fixture(scope="module")
def server(onnx_artifact):
    """A real uvicorn server on loopback, in a thread, serving the int4 artifact."""
    app = create_app(onnx_artifact(VARIANT), max_batch=4, max_wait_ms=20, max_new_tokens=16)
    with serve_in_background(app) as url:
        yield url, app


def test_fresh_server_is_healthy_with_no_nan(onnx_artifact):
    app = create_app(onnx_artifact(VARIANT))
    with serve_in_background(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        health = client.get("/health")
        ready, live = client.get("/health/ready"), client.get("/health/live")
    assert health.status_code == 200
    body = strict_json(health)
    assert body["status"] == "ok" and body["ready"] and body["live"] and body["not_ready"] is None
    assert body["latency_ms"] == {"latency_ms_p50": None, "latency_ms_p95": None, "latency_ms_p99": None}
    assert body["requests"]["received"] == 0 and body["last_error"] is None
    assert body["queue"] == {"depth": 0, "capacity": 64, "overloaded": False}
    assert body["batcher"]["batches"] == 1  # the warm-up request
    assert 0 < body["memory"]["pressure"] < 1 and body["memory"]["budget_from"] == "this-machine"
    assert ready.status_code == 200 and live.status_code == 200


def test_while_loading_live_but_not_ready_and_requests_get_503(onnx_artifact):
    """Before the lifespan has loaded the model (TestClient without ``with`` runs no lifespan)."""
    app = create_app(onnx_artifact(VARIANT))
    client = TestClient(app, base_url="http://localhost")
    try:
        health = client.get("/health")
        assert health.status_code == 200 and strict_json(health)["status"] == "loading"
        assert not strict_json(health)["ready"]
        assert client.get("/health/live").status_code == 200
        ready = client.get("/health/ready")
        assert ready.status_code == 503 and "loading" in ready.json()["reason"]
        reply = client.post("/generate", json={"prompt": "Good", "max_new_tokens": 2})
        assert reply.status_code == 503 and int(reply.headers["retry-after"]) > 0
        assert strict_json(client.get("/health"))["requests"]["unavailable"] == 1
    finally:
        app.state.server.engine.close()
    assert client.get("/health/live").status_code == 503  # the worker has stopped


def test_after_an_error_health_counts_it_and_names_it(onnx_artifact):
    app = create_app(onnx_artifact(VARIANT))
    with serve_in_background(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        assert client.post("/generate", json={"prompt": "Good", "max_new_tokens": 2}).status_code == 200
        app.state.server.runner.close()  # the runtime goes away under the server: generation fails
        reply = client.post("/generate", json={"prompt": "Good", "max_new_tokens": 2})
        health = strict_json(client.get("/health"))
    assert reply.status_code == 500 and reply.json()["error"].startswith("generation failed")
    assert health["status"] == "ok"  # alive and ready: one failed request is not a dead replica
    assert health["requests"]["error"] == 1 and health["requests"]["ok"] == 1
    assert health["last_error"].startswith("generation failed")


def test_over_memory_budget_not_ready(onnx_artifact, tmp_path):
    profile = tmp_path / "tiny-device.json"
    profile.write_text(json.dumps({"name": "tiny-device", "kind": "cpu", "host_gib": 0.01}))
    app = create_app(onnx_artifact(VARIANT), device=profile)
    with serve_in_background(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        health, ready = strict_json(client.get("/health")), client.get("/health/ready")
    assert ready.status_code == 503 and "over the" in ready.json()["reason"]
    memory = health["memory"]
    assert memory["over_budget"] and memory["pressure"] > 1 and memory["budget_from"] == "tiny-device"
    assert not health["ready"] and health["live"]


def test_burst_of_concurrent_requests_all_answered(server):
    url, app = server
    prompts = [f"{w} my lord" for w in ("Good", "Speak", "Where", "Alas", "Why", "What", "How", "O")] * 2
    with httpx.Client(base_url=url, timeout=60) as client:
        alone = client.post("/generate", json={"prompt": prompts[0], "max_new_tokens": 6}).json()
        with ThreadPoolExecutor(16) as pool:
            replies = list(pool.map(lambda p: client.post("/generate", json={"prompt": p, "max_new_tokens": 6}),
                                    prompts))
        health = strict_json(client.get("/health"))
    assert all(r.status_code == 200 for r in replies)
    bodies = [r.json() for r in replies]
    assert all(b["new_tokens"] == 6 and len(b["tokens"]) == 6 for b in bodies)
    assert bodies[0]["tokens"] == alone["tokens"]            # batching does not change the answer
    assert bodies[0]["tokens"] == bodies[8]["tokens"]         # same prompt, same answer
    assert max(app.state.batcher.batch_sizes) <= 4 and max(app.state.batcher.batch_sizes) > 1
    assert health["requests"]["ok"] >= 17
    p = health["latency_ms"]
    assert 0 < p["latency_ms_p50"] <= p["latency_ms_p95"] <= p["latency_ms_p99"]


def test_health_reports_artifact_memory_and_counts(server, onnx_artifact):
    from edgekit.artifacts.manifest import read_manifest

    url, _ = server
    health = strict_json(httpx.get(url + "/health", timeout=30))
    manifest = read_manifest(onnx_artifact(VARIANT))
    assert health["status"] == "ok"
    assert health["artifact"]["checksum"] == manifest.checksum
    assert health["artifact"]["variant"] == VARIANT and health["artifact"]["schema_version"] >= 1
    assert 0 < health["memory"]["rss_bytes"] <= health["memory"]["peak_rss_bytes"]
    assert set(health["requests"]) == {"received", "ok", "rejected", "queue_full", "unavailable", "timeout",
                                       "cancelled", "error"}


def test_metrics_parse_as_prometheus_text(server):
    url, _ = server
    with httpx.Client(base_url=url, timeout=30) as client:
        assert client.post("/generate", json={"prompt": "Good", "max_new_tokens": 3}).status_code == 200
        assert client.post("/generate", json={"prompt": "", "max_new_tokens": 3}).status_code == 422
        reply = client.get("/metrics")
    assert reply.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(reply.text)}
    requests = {(s.labels["endpoint"], s.labels["outcome"]): s.value
                for s in families["edgekit_requests"].samples if s.name == "edgekit_requests_total"}
    assert requests[("/generate", "ok")] >= 1 and requests[("/generate", "rejected")] >= 1

    def value(family, sample_name=None, **labels):
        return next(s.value for s in families[family].samples
                    if s.name == (sample_name or family) and all(s.labels.get(k) == v for k, v in labels.items()))

    assert value("edgekit_request_duration_seconds", "edgekit_request_duration_seconds_count",
                 endpoint="/generate") == requests[("/generate", "ok")]
    assert value("edgekit_generated_tokens", "edgekit_generated_tokens_total") >= 3
    assert value("edgekit_queue_depth") == 0 and value("edgekit_queue_capacity") == 64
    assert value("edgekit_ready") == 1
    assert value("process_resident_memory_bytes") > 0
    assert value("edgekit_peak_resident_memory_bytes") >= value("process_resident_memory_bytes")  # read after it


@pytest.mark.parametrize("body,status", [
    ({"prompt": "", "max_new_tokens": 4}, 422),                 # empty prompt
    ({"prompt": "   ", "max_new_tokens": 4}, 422),              # nothing to continue
    ({"prompt": "Good", "max_new_tokens": 10_000}, 422),        # too many tokens
    ({"prompt": "Good", "max_new_tokens": 0}, 422),
    ({"prompt": 42, "max_new_tokens": 4}, 422),                 # wrong types
    ({"prompt": "Good", "max_new_tokens": "4"}, 422),
    ({"max_new_tokens": 4}, 422),                               # missing prompt
    ({"prompt": "word " * 2000, "max_new_tokens": 4}, 413),     # longer than the context
])
def test_bad_requests_get_4xx_with_reason_and_server_keeps_serving(server, body, status):
    url, _ = server
    with httpx.Client(base_url=url, timeout=60) as client:
        before = client.get("/health").json()["requests"]["rejected"]
        reply = client.post("/generate", json=body)
        assert reply.status_code == status
        reason = reply.json()["error"]
        assert isinstance(reason, str) and reason
        assert client.get("/health").json()["requests"]["rejected"] == before + 1
        assert client.post("/generate", json={"prompt": "Good", "max_new_tokens": 2}).status_code == 200


def test_not_json_is_rejected(server):
    url, _ = server
    reply = httpx.post(url + "/generate", content=b"not json", headers={"content-type": "application/json"},
                       timeout=30)
    assert reply.status_code == 422


def test_tampered_artifact_refused_at_start(onnx_artifact, tmp_path):
    folder = shutil.copytree(onnx_artifact(VARIANT), tmp_path / "tampered")
    with open(folder / "tokenizer_config.json", "a") as f:
        f.write(" ")
    with pytest.raises(ArtifactError, match="sha256"):
        create_app(folder)
