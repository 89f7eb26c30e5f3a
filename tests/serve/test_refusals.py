"""A server that refuses before it works: body limit, prompt precheck, API key, Host allow-list, bounded
sampling settings, /health without paths or exception text, a load failure that exits non-zero."""
import json
import shutil
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from edgekit.artifacts.manifest import MANIFEST
from edgekit.cli import main
from edgekit.serve.app import create_app, serve_in_background

VARIANT = "onnx-int4-g32"
KEY = "s3cret-key"


@pytest.fixture(scope="module")
def served(onnx_artifact):
    app = create_app(onnx_artifact(VARIANT), max_new_tokens=16, api_key=KEY)
    with serve_in_background(app) as url:
        yield url, app


def _client(url, key=KEY, **kwargs):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=url, timeout=30, headers=headers, **kwargs)


def _post_raw(url: str, path: str, body: bytes, key: str = KEY) -> tuple[int, float]:
    """POST ``body`` through a raw socket; (status, seconds from the headers to the status line).
    The body is sent from a side thread, so the answer is timed whether or not the server reads it."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {key}\r\nContent-Length: {len(body)}\r\n\r\n").encode()

    def send_body():
        try:
            sock.sendall(body)
        except OSError:  # the server answered and closed: the rest is never read
            pass

    start = time.perf_counter()
    sock.sendall(head)
    sender = threading.Thread(target=send_body, daemon=True)
    sender.start()
    status_line = sock.makefile("rb").readline()
    elapsed = time.perf_counter() - start
    sock.close()
    return int(status_line.split()[1]), elapsed


def test_an_8_mib_body_gets_413_at_once_while_health_answers(served):
    url, _ = served
    body = json.dumps({"model": VARIANT, "prompt": "a" * (8 << 20)}).encode()
    with ThreadPoolExecutor(1) as pool, _client(url) as client:
        health = pool.submit(lambda: [client.get("/health").status_code for _ in range(5)])
        answers = [_post_raw(url, "/v1/completions", body) for _ in range(3)]
        health = health.result()
    assert health == [200] * 5
    assert all(status == 413 for status, _ in answers), answers
    assert max(seconds for _, seconds in answers) < 0.1, answers


def test_a_prompt_that_cannot_fit_is_refused_before_tokenizing(served):
    url, app = served
    server = app.state.server
    calls = []
    tokenizer = server.runner.tokenizer
    real = type(tokenizer).__call__
    type(tokenizer).__call__ = lambda self, *a, **k: calls.append(1) or real(self, *a, **k)
    try:
        with _client(url) as client:
            reply = client.post("/generate", json={"prompt": "x" * 500_000, "max_new_tokens": 4})
    finally:
        type(tokenizer).__call__ = real
    assert reply.status_code == 413 and "cannot fit" in reply.json()["error"]
    assert calls == []


def test_api_key_is_required_except_on_probes(served):
    url, _ = served
    payload = {"model": VARIANT, "prompt": "HAMLET:", "max_tokens": 2, "temperature": 0}
    with _client(url, key=None) as anonymous, _client(url, key="wrong") as wrong, _client(url) as right:
        assert anonymous.post("/v1/completions", json=payload).status_code == 401
        refused = wrong.post("/v1/completions", json=payload)
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
        assert refused.json()["error"]["code"] == "invalid_api_key"
        assert anonymous.get("/metrics").status_code == 401
        assert [anonymous.get(p).status_code for p in ("/health", "/health/live", "/health/ready")] == [200] * 3
        assert right.post("/v1/completions", json=payload).status_code == 200


def test_a_foreign_host_gets_400(served):
    url, _ = served
    with _client(url) as client:
        assert client.get("/health", headers={"Host": "attacker.example"}).status_code == 400
        assert client.get("/health", headers={"Host": "localhost:8000"}).status_code == 200


def test_tiny_temperatures_are_greedy_and_huge_seeds_are_400(served):
    url, _ = served
    base = {"model": VARIANT, "prompt": "HAMLET:", "max_tokens": 6}
    with _client(url) as client:
        greedy = client.post("/v1/completions", json={**base, "temperature": 0}).json()["choices"][0]["text"]
        tiny = client.post("/v1/completions", json={**base, "temperature": 1e-320})
        assert tiny.status_code == 200 and tiny.json()["choices"][0]["text"] == greedy
        for seed in (2**64 + 1, -1):
            reply = client.post("/v1/completions", json={**base, "temperature": 0.7, "seed": seed})
            assert reply.status_code == 400 and "seed" in reply.json()["error"]["message"]
        seeded = [client.post("/v1/completions", json={**base, "temperature": 0.9, "seed": 7}).json()["choices"][0]
                  ["text"] for _ in range(2)]
        assert seeded[0] == seeded[1]


def test_health_shows_no_paths_and_no_exception_text(served, onnx_artifact):
    url, _ = served
    with _client(url) as client:
        text = client.get("/health").text
    assert str(onnx_artifact(VARIANT)) not in text and '"path"' not in text


def test_a_load_failure_exits_non_zero(onnx_artifact, tmp_path, capsys):
    folder = tmp_path / "artifact"
    shutil.copytree(onnx_artifact(VARIANT), folder)
    data = json.loads((folder / MANIFEST).read_text())
    data["runtime_settings"] = {**data["runtime_settings"], "graph_optimization_level": "bogus"}
    (folder / MANIFEST).write_text(json.dumps(data))  # verifies (files intact), fails to load
    app = create_app(folder)
    with pytest.raises(Exception, match="could not load"), serve_in_background(app):
        pass
    assert app.state.server.health()["last_error"] == "the model failed to load (InputError); see the server log"
    assert "choose one of" not in json.dumps(app.state.server.health())  # the exception text stays in the log
    start = time.monotonic()
    assert main(["serve", str(folder), "--port", "0"]) == 2
    assert "could not load the artifact" in capsys.readouterr().err
    assert time.monotonic() - start < 120
