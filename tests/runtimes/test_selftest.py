"""Native runtimes prove themselves in a child process; a crash refuses that runtime, nothing else."""
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgekit.core.errors import EdgekitError
from edgekit.runtimes import selftest

TESTS = Path(__file__).resolve().parents[1]  # crashing_probes.py
SMALL = ["--context", "128", "--stride", "128", "--max-tokens", "1024", "--no-latency"]


def _env(tmp_path, **extra):
    return {**os.environ, "EDGEKIT_HOME": str(tmp_path / "home"), "XDG_CACHE_HOME": str(tmp_path / "cache"),
            "PYTHONPATH": str(TESTS), **extra}


def _stored(store: Path) -> list[tuple]:
    with sqlite3.connect(store) as db:
        return db.execute("SELECT variant, status, error, run_id FROM results ORDER BY id").fetchall()


@pytest.mark.parametrize("runtime", sorted(selftest.PROBES))
def test_every_real_runtime_passes_its_probe_here_and_the_verdict_is_cached(runtime, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(selftest, "_verdicts", {})
    first = selftest.check(runtime)
    assert first.ok, first.reason
    assert not first.cached
    monkeypatch.setattr(selftest, "_verdicts", {})
    again = selftest.check(runtime)
    assert again.ok and again.cached
    assert len(list(tmp_path.glob(f"edgekit/selftest/{runtime}-*.json"))) == 1


@pytest.mark.parametrize("probe, cause", [("illegal_instruction", "illegal instruction"),
                                          ("segfault", "segmentation fault")])
def test_a_probe_killed_by_a_signal_refuses_its_runtime_in_one_line(probe, cause, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(TESTS))
    monkeypatch.setenv("EDGEKIT_SELFTEST_PROBES", f"llama.cpp=crashing_probes:{probe}")
    monkeypatch.setattr(selftest, "_verdicts", {})
    with pytest.raises(EdgekitError) as err:
        selftest.require("llama.cpp")
    message = str(err.value)
    assert "\n" not in message
    assert cause in message and "make llama-cpp" in message


def test_a_crashing_runtime_is_refused_while_the_other_variants_are_measured(tmp_path):
    """The compare child survives a llama.cpp that would die with SIGILL: gguf refused, the rest measured."""
    env = _env(tmp_path, EDGEKIT_SELFTEST_PROBES="llama.cpp=crashing_probes:illegal_instruction")
    done = subprocess.run([sys.executable, "-m", "edgekit", "compare", "--variants", "fp32,gguf-q8_0,int4-g32",
                           *SMALL],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {variant: (status, error) for variant, status, error, _ in _stored(tmp_path / "home" / "results.sqlite")}
    assert rows["fp32"][0] == rows["int4-g32"][0] == "ok"
    status, error = rows["gguf-q8_0"]
    assert status == "error" and "illegal instruction" in error and "\n" not in error
    assert "  gguf-q8_0: llama.cpp crashed with an illegal instruction" in done.stderr


def test_a_killed_compare_resumes_without_measuring_anything_twice(tmp_path):
    variants = ["fp32", "int8", "int4-g32", "int2-g64"]
    args = [sys.executable, "-m", "edgekit", "compare", "--variants", ",".join(variants), *SMALL]
    store = tmp_path / "home" / "results.sqlite"
    child = subprocess.Popen(args, env=_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and child.poll() is None:
        if store.is_file() and len(_stored(store)) >= 2:  # the baseline and the first variant are in
            child.kill()
            break
        time.sleep(0.05)
    child.wait()
    first = _stored(store)
    assert child.returncode == -9, "the compare child finished before it could be killed"
    assert 2 <= len(first) < len(variants)

    again = subprocess.run([*args, "--resume", "--json", str(tmp_path / "out.json")], env=_env(tmp_path),
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    rows = _stored(store)
    assert rows[: len(first)] == first  # nothing measured before the kill was touched
    assert sorted(v for v, *_ in rows) == sorted(variants)  # each variant measured exactly once
    assert all(status == "ok" for _, status, *_ in rows)
    out = json.loads((tmp_path / "out.json").read_text())
    assert [r["variant"] for r in out] == variants
    assert all(r["kl_divergence"] is not None for r in out[1:])  # KL against the kept baseline
