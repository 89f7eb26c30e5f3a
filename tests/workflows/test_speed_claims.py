"""Consumers of speed figures refuse a claim their interval does not support: decide, the canary, tuning."""
import pandas as pd
import pytest

from edgekit.measure.store import Result
from edgekit.serve.batching import largest_batch_within
from edgekit.serve.load_test import target_latency
from edgekit.workflows.canary import CanaryThresholds, judge
from edgekit.workflows.decide import decide
from edgekit.workflows.tuning import TuningReport, rank

QUALITY = {"kl_divergence": 0.001, "kl_divergence_ci95": [0.0, 0.002]}


def _row(variant, rate, low, high, contended=False, **extra):
    metrics = {**QUALITY, "decode_tokens_per_s": rate, "decode_tokens_per_s_ci95": [low, high],
               "weight_bytes": 11_000_000, "contended": contended, **extra}
    return Result(model="default", variant=variant, metrics=metrics, model_revision="hand-made",
                  settings={"eval_sha256": "abc", "context": 128, "stride": 64, "max_tokens": 512, "baseline": "fp32"})


def test_decide_judges_tokens_per_s_on_the_lower_bound():
    """A median of 120 tokens/s whose interval reaches down to 80 does not support "at least 100"."""
    wide = decide([_row("int4-g32", 120.0, 80.0, 150.0)], "laptop-16gb", min_tokens_per_s=100.0)
    assert wide.recommended is None and "80 tokens/s (95% lower bound) < 100" in wide.summary()
    narrow = decide([_row("int4-g32", 120.0, 110.0, 130.0)], "laptop-16gb", min_tokens_per_s=100.0)
    assert narrow.recommended.variant == "int4-g32"


def test_decide_keeps_contended_speed_out_unless_trusted():
    rows = [_row("int4-g32", 300.0, 290.0, 310.0, contended=True)]
    refused = decide(rows, "laptop-16gb", min_tokens_per_s=100.0)
    assert refused.recommended is None and "contended" in refused.summary()
    assert decide(rows, "laptop-16gb", min_tokens_per_s=100.0, trust_contended=True).recommended.variant == "int4-g32"
    assert decide(rows, "laptop-16gb", max_kl=0.01).recommended is not None   # quality alone is not speed


def test_decide_does_not_gate_on_a_withheld_p99():
    rows = [_row("int4-g32", 300.0, 290.0, 310.0, latency_ms_p99=None, latency_samples=75)]
    decision = decide(rows, "laptop-16gb", max_p99_ms=1000.0)
    assert decision.recommended is None and "P99 withheld: 75 decode steps" in decision.summary()


CANARY_QUALITY = {"delta_ppl_pct": 0.1, "delta_ppl_pct_ci95": [-0.1, 0.3], "kl_divergence": 0.001,
                  "kl_divergence_ci95": [0.0, 0.002], "top1_agreement": 0.99, "top1_agreement_ci95": [0.98, 1.0]}


def _speed_checks(metrics, **limits):
    return {c["check"]: c for c in judge({**CANARY_QUALITY, **metrics}, CanaryThresholds(**limits))[3:]}


def test_canary_slowdown_is_judged_on_its_pessimistic_bound():
    """A 2% median slowdown whose interval reaches 15% fails a 10% limit."""
    checks = _speed_checks({"slowdown_pct": 2.0, "slowdown_pct_ci95": [-5.0, 15.0], "median_step_increase_pct": 2.0,
                            "median_step_increase_pct_bound": 17.6, "contended": False})
    assert not checks["decode slowdown"]["passed"] and checks["decode slowdown"]["bound"] == 15.0
    assert checks["median latency increase"]["passed"] and "P99 withheld" in checks["median latency increase"]["unit"]


def test_canary_gates_p99_only_with_its_samples_and_never_on_contended_timing():
    enough = {"slowdown_pct": 1.0, "slowdown_pct_ci95": [0.0, 3.0], "p99_increase_pct": 10.0,
              "p99_increase_pct_bound": 40.0, "contended": False}
    checks = _speed_checks(enough)
    assert not checks["P99 latency increase"]["passed"] and checks["P99 latency increase"]["bound"] == 40.0
    contended = _speed_checks({**enough, "p99_increase_pct_bound": 12.0, "contended": True})
    assert not any(c["passed"] for c in contended.values())
    assert all(c["passed"] for c in _speed_checks({**enough, "p99_increase_pct_bound": 12.0, "contended": True},
                                                  trust_contended=True).values())


def _timed(settings, rate, low, high, contended=False):
    return {"settings": settings, "latency_ms_p50": 1000 / rate, "latency_ms_p99": 1000 / rate, "error": None,
            "decode_tokens_per_s": rate, "decode_tokens_per_s_ci95": [low, high], "contended": contended}


def test_a_winner_only_when_its_interval_excludes_the_defaults():
    """10x faster on the point estimates but the intervals overlap: a tie, the default stays."""
    tie = TuningReport(rank(pd.DataFrame([_timed({"t": 1}, 10.0, 5.0, 40.0), _timed({"t": 2}, 100.0, 30.0, 120.0)]),
                            {"t": 1}), {"t": 1})
    assert tie.best == {"t": 2} and tie.gain_over_default == pytest.approx(10.0) and tie.winner() == {"t": 1}
    clear = TuningReport(rank(pd.DataFrame([_timed({"t": 1}, 10.0, 9.0, 11.0), _timed({"t": 2}, 20.0, 18.0, 22.0)]),
                              {"t": 1}), {"t": 1})
    assert clear.winner() == {"t": 2}


def test_a_contended_candidate_is_no_winner_unless_insisted_on():
    table = rank(pd.DataFrame([_timed({"t": 1}, 10.0, 9.0, 11.0), _timed({"t": 2}, 20.0, 18.0, 22.0, True)]), {"t": 1})
    report = TuningReport(table, {"t": 1})
    assert report.winner() == {"t": 1} and report.winner(insist=True) == {"t": 2}


def test_a_batch_target_is_judged_on_p99_only_with_enough_runs():
    """Three runs of batch 8: their "P99" (the slowest run, 25 ms) is not gated on; the median's upper bound is."""
    sweep = pd.DataFrame({"batch_size": [1, 8], "latency_ms_p99": [10.0, 25.0],
                          "latency_ms_p50_ci95": [[8.0, 9.0], [20.0, 35.0]],
                          "target_basis": ["median upper bound", "median upper bound"]})
    assert largest_batch_within(sweep, 30.0) == 1        # 35 ms > 30 although the "P99" reads 25
    sweep["target_basis"] = ["p99", "p99"]
    assert largest_batch_within(sweep, 30.0) == 8


def test_a_serving_target_is_judged_on_p99_only_with_enough_answers():
    few = {"answered": 40, "latency_ms_p99": 90.0, "latency_ms_p50_ci95": [50.0, 120.0]}
    assert target_latency(few) == ("median upper bound", 120.0)
    assert target_latency({**few, "answered": 200}) == ("p99", 90.0)
