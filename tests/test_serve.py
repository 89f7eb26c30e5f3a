"""The server on 127.0.0.1: a burst of concurrent requests, health, bad requests, a tampered artifact refused."""
import shutil
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import uvicorn

from edgekit.errors import ArtifactError
from edgekit.serve import create_app

VARIANT = "onnx-int4-g32"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(onnx_artifact):
    """A real uvicorn server on loopback, in a thread, serving the int4 artifact."""
    app = create_app(onnx_artifact(VARIANT), max_batch=4, max_wait_ms=20, max_new_tokens=16)
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started:
        assert time.time() < deadline, "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", app
    srv.should_exit = True
    thread.join(timeout=30)


def test_burst_of_concurrent_requests_all_answered(server):
    url, app = server
    prompts = [f"{w} my lord" for w in ("Good", "Speak", "Where", "Alas", "Why", "What", "How", "O")] * 2
    with httpx.Client(base_url=url, timeout=60) as client:
        alone = client.post("/generate", json={"prompt": prompts[0], "max_new_tokens": 6}).json()
        with ThreadPoolExecutor(16) as pool:
            replies = list(pool.map(lambda p: client.post("/generate", json={"prompt": p, "max_new_tokens": 6}),
                                    prompts))
        health = client.get("/health").json()
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
    from edgekit.artifact import read_manifest

    url, _ = server
    health = httpx.get(url + "/health", timeout=30).json()
    manifest = read_manifest(onnx_artifact(VARIANT))
    assert health["status"] == "ok"
    assert health["artifact"]["checksum"] == manifest.checksum
    assert health["artifact"]["variant"] == VARIANT and health["artifact"]["schema_version"] >= 1
    assert 0 < health["memory"]["rss_bytes"] <= health["memory"]["peak_rss_bytes"]
    assert set(health["requests"]) == {"received", "ok", "rejected", "errors"}


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
        reason = reply.json().get("error") or reply.json().get("detail")
        assert isinstance(reason, str) and reason
        assert client.get("/health").json()["requests"]["rejected"] == before + 1
        assert client.post("/generate", json={"prompt": "Good", "max_new_tokens": 2}).status_code == 200


def test_not_json_is_rejected(server):
    url, _ = server
    reply = httpx.post(url + "/generate", content=b"not json", headers={"content-type": "application/json"}, timeout=30)
    assert reply.status_code == 422


def test_tampered_artifact_refused_at_start(onnx_artifact, tmp_path):
    folder = shutil.copytree(onnx_artifact(VARIANT), tmp_path / "tampered")
    with open(folder / "tokenizer_config.json", "a") as f:
        f.write(" ")
    with pytest.raises(ArtifactError, match="sha256"):
        create_app(folder)
