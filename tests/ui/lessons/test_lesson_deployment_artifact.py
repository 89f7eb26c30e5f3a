"""Notebook 06's closing reads the canary's actual verdict and grounds: the tail check P99 gets only with enough
samples, contention, and each failed check."""
from __future__ import annotations

import pytest

from edgekit.ui.lessons.deployment_artifact import closing


def check(name, value, bound, limit, passed):
    return {"check": name, "value": value, "bound": bound, "limit": limit, "unit": "", "passed": passed}


@pytest.fixture
def figures():
    """The stored run: 3 runs of 16 tokens (45 steps each), contended, the candidate worse on quality."""
    return {
        "source": "default", "exit_code": 0,
        "refusals": {"tampered model": "sha256 mismatch", "missing tokenizer": "missing file"},
        "checks": [check("perplexity delta", 2.1, 3.0, 1.0, False), check("KL divergence", 0.01, 0.012, 0.02, True),
                   check("top-1 agreement", 0.96, 0.955, 0.95, True),
                   dict(check("decode slowdown", -20.0, -5.0, 10.0, False), unit="% - contended"),
                   check("median latency increase", -15.0, 3.0, 25.0, False)],
        "verdict": "hold back: perplexity delta, decode slowdown, median latency increase",
        "samples": {"current": 45, "candidate": 45}, "p99_min": 100, "contended": True,
    }


def test_withheld_p99_is_said_and_the_median_gates_the_tail(figures):
    text = closing(figures)
    assert "fewer than the 100 a P99 needs, so P99 is withheld" in text
    assert "median latency increase judged on 3.00 against a limit of 25.0" in text
    figures["samples"] = {"current": 480, "candidate": 480}
    figures["checks"][-1] = check("P99 latency increase", 40.0, 60.0, 25.0, False)
    text = closing(figures)
    assert ("so the tail is gated on P99: P99 latency increase judged on 60.0 against a limit of 25.0: **failed**"
            in text)
    assert "withheld" not in text


def test_the_verdict_is_the_reports(figures):
    text = closing(figures)
    assert "**hold back**, on perplexity delta, decode slowdown and median latency increase" in text
    assert "fail whatever their values" in text
    assert "median latency increase judged on 3.00 against a limit of 25.0: **failed**" in text
    figures["contended"] = False
    figures["checks"] = [dict(c, passed=True) for c in figures["checks"]]
    figures["verdict"] = "promote"
    text = closing(figures)
    assert "**promote**: every check passed" in text and "hold back" not in text
    assert "The timing ran uncontended: decode slowdown judged on -5.00 against a limit of 10.0: passed" in text


def test_a_contended_check_says_why_it_failed(figures):
    assert "decode slowdown judged on -5.00 against a limit of 10.0: **failed** (contended timing)" in closing(figures)


def test_a_damage_verification_missed_is_named(figures):
    assert "refused all 2 damaged copies" in closing(figures)
    figures["refusals"]["unlisted file"] = "accepted (!)"
    assert "**accepted** unlisted file: verification missed 1 damage" in closing(figures)
