"""The server under load and faults on 127.0.0.1: a full queue, timeouts, clients that leave, SIGTERM.

Long requests here are greedy answers of several hundred tokens (seconds on the tiny model); every
wait is bounded, and the checks are on what the server did (status codes, counters, tokens
generated), never on how long it took.
"""
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import openai
import pytest

from edgekit.serve.app import create_app, serve_in_background

VARIANT = "onnx-int4-g32"
PROMPT = "Good my lord"
LONG = 900  # tokens: a request that is still decoding when the test acts on it


def metric(url: str, name: str, **labels) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url + "/metrics", timeout=30).text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def wait_until(condition, what: str, within_s: float = 60.0) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {within_s} s"
        time.sleep(0.05)


def client(url: str, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60, **kwargs)


@pytest.fixture(scope="module")
def one_slot(onnx_artifact):
    """A server that admits one request at a time."""
    app = create_app(onnx_artifact(VARIANT), max_queue=1, max_new_tokens=LONG)
    with serve_in_background(app) as url:
        yield url


def test_full_queue_answers_429_and_server_keeps_serving(one_slot):
    url = one_slot
    tokens_before = metric(url, "edgekit_generated_tokens_total")
    stream = client(url).completions.create(model=VARIANT, prompt=PROMPT, max_tokens=LONG, temperature=0,
                                            stream=True)
    next(iter(stream))  # the long request is decoding: the one slot is taken
    with pytest.raises(openai.RateLimitError) as refused:
        client(url).completions.create(model=VARIANT, prompt=PROMPT, max_tokens=2, temperature=0)
    assert int(refused.value.response.headers["retry-after"]) >= 1
    assert httpx.post(url + "/generate", json={"prompt": PROMPT, "max_new_tokens": 2}, timeout=30).status_code == 429
    health = httpx.get(url + "/health", timeout=30)
    assert health.status_code == 200 and health.json()["status"] == "overloaded"
    assert health.json()["queue"] == {"depth": 1, "capacity": 1, "overloaded": True}

    stream.close()  # the client leaves: its work stops and the slot frees
    wait_until(lambda: metric(url, "edgekit_queue_depth") == 0, "freeing the slot")
    assert metric(url, "edgekit_requests_total", outcome="cancelled") == 1
    assert metric(url, "edgekit_generated_tokens_total") - tokens_before < LONG
    reply = client(url).completions.create(model=VARIANT, prompt=PROMPT, max_tokens=2, temperature=0)
    assert reply.usage.completion_tokens == 2
    assert metric(url, "edgekit_requests_total", outcome="queue_full") == 2


def test_client_that_hangs_up_cancels_its_work(one_slot):
    url = one_slot
    tokens_before = metric(url, "edgekit_generated_tokens_total")
    cancelled_before = metric(url, "edgekit_requests_total", outcome="cancelled")
    with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes the connection
        httpx.post(url + "/v1/completions", json={"model": VARIANT, "prompt": PROMPT, "max_tokens": LONG,
                                                  "temperature": 0}, timeout=httpx.Timeout(30, read=0.5))
    wait_until(lambda: metric(url, "edgekit_queue_depth") == 0, "cancelling the abandoned request")
    assert metric(url, "edgekit_requests_total", outcome="cancelled") == cancelled_before + 1
    assert metric(url, "edgekit_generated_tokens_total") - tokens_before < LONG


def test_request_past_its_timeout_gets_504_and_stops(onnx_artifact):
    app = create_app(onnx_artifact(VARIANT), max_new_tokens=LONG, timeout_s=0.5)
    with serve_in_background(app) as url:
        with pytest.raises(openai.InternalServerError) as late:
            client(url).completions.create(model=VARIANT, prompt=PROMPT, max_tokens=LONG, temperature=0)
        assert late.value.status_code == 504 and "limit" in late.value.message
        stream = client(url).completions.create(model=VARIANT, prompt=PROMPT, max_tokens=LONG, temperature=0,
                                                stream=True)
        with pytest.raises(openai.APIError, match="limit"):  # headers were sent: the error comes as an event
            list(stream)
        wait_until(lambda: metric(url, "edgekit_queue_depth") == 0, "stopping the late requests")
        assert metric(url, "edgekit_requests_total", outcome="timeout") == 2
        assert metric(url, "edgekit_generated_tokens_total") < 2 * LONG
        assert client(url).completions.create(model=VARIANT, prompt=PROMPT, max_tokens=2, temperature=0).choices


def test_sigterm_finishes_the_request_in_flight(onnx_artifact, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "edgekit", "serve", str(onnx_artifact(VARIANT)),
                                 "--port", str(port)], stdout=err, stderr=subprocess.STDOUT, env=os.environ.copy())
    try:
        def ready() -> bool:
            assert proc.poll() is None, log.read_text()
            try:
                return httpx.get(url + "/health/ready", timeout=5).status_code == 200
            except httpx.TransportError:
                return False
        wait_until(ready, "the server getting ready", within_s=180)
        chunks = client(url).completions.create(model=VARIANT, prompt=PROMPT, max_tokens=200, temperature=0,
                                                stream=True, stream_options={"include_usage": True})
        received = [next(iter(chunks))]
        proc.send_signal(signal.SIGTERM)  # while the answer is being written
        received += list(chunks)
        assert proc.wait(timeout=120) == -signal.SIGTERM  # uvicorn re-raises the signal after a clean shutdown
    finally:
        if proc.poll() is None:
            proc.kill()
    finish = [c.choices[0].finish_reason for c in received if c.choices][-1]
    assert finish in ("length", "stop")
    if finish == "length":
        assert received[-1].usage.completion_tokens == 200
    text = log.read_text()
    assert "Waiting for connections to close" in text  # the request was still in flight at SIGTERM
    assert "stopped after" in text
