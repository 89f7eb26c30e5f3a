"""The dynamic batcher answers every request exactly once, respects its cap and wait; the sweep and load test add
up."""
import threading
import time

import pandas as pd
import pytest

from edgekit.core.errors import InputError
from edgekit.serve.batching import (
    DynamicBatcher,
    batch_sweep,
    generation_batcher,
    largest_batch_within,
    poisson_arrivals,
    poisson_load,
)


def _recording_batcher(max_batch, max_wait_ms, work_s=0.0):
    seen = []
    lock = threading.Lock()

    def run(payloads):
        with lock:
            seen.extend(payloads)
        time.sleep(work_s)
        return [p * 10 for p in payloads]
    return DynamicBatcher(run, max_batch, max_wait_ms), seen


def test_every_request_answered_once_and_cap_respected():
    batcher, seen = _recording_batcher(max_batch=4, max_wait_ms=5, work_s=0.002)
    futures = {}

    def client(start):
        for i in range(start, start + 50):
            futures[i] = batcher.submit(i)
    threads = [threading.Thread(target=client, args=(k * 50,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    answers = {i: f.result(timeout=30) for i, f in futures.items()}
    batcher.close()
    assert answers == {i: i * 10 for i in range(200)}          # each got its own answer
    assert sorted(seen) == list(range(200))                     # no request lost or run twice
    assert sum(batcher.batch_sizes) == 200
    assert max(batcher.batch_sizes) <= 4
    assert max(batcher.batch_sizes) > 1                         # concurrent requests were grouped


def test_wait_closes_a_batch_that_does_not_fill():
    batcher, _ = _recording_batcher(max_batch=8, max_wait_ms=30)
    start = time.perf_counter()
    assert batcher.submit(1).result(timeout=5) == 10
    elapsed = time.perf_counter() - start
    batcher.close()
    assert batcher.batch_sizes == [1]
    assert 0.025 <= batcher.batch_waits_s[0] < 1.0   # waited for company, then gave up
    assert elapsed >= 0.025


def test_full_batch_does_not_wait():
    batcher, _ = _recording_batcher(max_batch=2, max_wait_ms=5000)
    start = time.perf_counter()
    futures = [batcher.submit(i) for i in range(2)]
    assert [f.result(timeout=5) for f in futures] == [0, 10]
    assert time.perf_counter() - start < 2.0
    batcher.close()
    assert batcher.batch_sizes == [2]


def test_failing_batch_fails_its_requests_only():
    def run(payloads):
        if "bad" in payloads:
            raise ValueError("boom")
        return payloads
    batcher = DynamicBatcher(run, max_batch=1, max_wait_ms=0)
    bad, good = batcher.submit("bad"), batcher.submit("good")
    with pytest.raises(ValueError):
        bad.result(timeout=5)
    assert good.result(timeout=5) == "good"
    batcher.close()


def test_bad_settings_refused():
    with pytest.raises(InputError):
        DynamicBatcher(lambda p: p, max_batch=0)
    with pytest.raises(InputError):
        poisson_arrivals(0, 5)


def test_poisson_arrivals_seeded_and_rate():
    a, b = poisson_arrivals(50, 2000, seed=3), poisson_arrivals(50, 2000, seed=3)
    assert (a == b).all() and a[0] == 0 and (a[1:] >= a[:-1]).all()
    assert 40 < 2000 / a[-1] < 60


def test_poisson_load_counts_and_misses():
    batcher, seen = _recording_batcher(max_batch=4, max_wait_ms=5, work_s=0.01)
    report = poisson_load(batcher, list(range(40)), rate_per_s=200, p99_target_ms=1e6, seed=1, progress=False)
    batcher.close()
    assert report["answers"] == [i * 10 for i in range(40)]
    assert sorted(seen) == list(range(40))
    assert report["missed_target"] == 0 and report["requests"] == 40
    assert report["latency_ms_p50"] <= report["latency_ms_p95"] <= report["latency_ms_p99"]
    assert 1 <= report["mean_batch_size"] <= 4


def test_largest_batch_within():
    sweep = pd.DataFrame({"batch_size": [1, 2, 4, 8], "latency_ms_p99": [10.0, 15.0, 30.0, 70.0]})
    assert largest_batch_within(sweep, 30.0) == 4
    assert largest_batch_within(sweep, 100.0) == 8
    assert largest_batch_within(sweep, 5.0) is None
    assert largest_batch_within(sweep, 30.0, max_wait_ms=10.0) == 2  # the batcher's wait counts against the target
    assert largest_batch_within(sweep, 15.0, max_wait_ms=10.0) is None


def test_batched_generation_matches_one_by_one(default_model, tokenizer):
    """TorchRunner.generate_batch (left-padded) and the batcher give the tokens single-prompt decoding gives."""
    from edgekit.runtimes import build_runner

    runner = build_runner("fp32", default_model, tokenizer)
    texts = ["To be, or not to be", "O", "HAMLET:\nWhat a piece of work", "Where is"]
    prompts = [tokenizer(t, return_tensors="pt", add_special_tokens=False)["input_ids"] for t in texts]
    alone = [list(runner.generate_stream(p, 8)) for p in prompts]
    assert runner.generate_batch(prompts, 8) == alone

    batcher = generation_batcher(runner, max_batch=4, max_wait_ms=50)
    futures = [batcher.submit((p, n)) for p, n in zip(prompts, (8, 3, 8, 5))]
    answers = [f.result(timeout=60) for f in futures]
    batcher.close()
    assert answers == [alone[0], alone[1][:3], alone[2], alone[3][:5]]

    sweep = batch_sweep(runner, prompts, batch_sizes=(1, 4), new_tokens=4, repeats=1, warmup=0, progress=False)
    assert list(sweep["batch_size"]) == [1, 4] and (sweep["tokens_per_s"] > 0).all()
    runner.close()
