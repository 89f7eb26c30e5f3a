"""edgekit.workflows.decide: a recommendation from a real comparison's store, and the edge cases from hand-made
rows."""
import pytest

from edgekit.cli import main
from edgekit.core.errors import InputError
from edgekit.measure.quality import EvalSettings
from edgekit.measure.store import Result, ResultStore
from edgekit.workflows.compare import LatencySettings, compare
from edgekit.workflows.decide import decide, quality_bound

MEASURED = ("fp32", "int4-g32", "int2-g64")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A store written by a real comparison of the default model (short text, two timed runs)."""
    store = ResultStore(tmp_path_factory.mktemp("decide") / "results.sqlite")
    results = compare("default", MEASURED, settings=EvalSettings(context=128, stride=64, max_tokens=512),
                      latency=LatencySettings(new_tokens=8, runs=2), store=store, progress=False)
    assert [r.status for r in results] == ["ok"] * len(MEASURED)
    return store


def _metrics(store):
    return {r.variant: r.metrics for r in store.results()}


def test_loose_limits_pick_the_fewest_bytes(store):
    decision = decide(store, "laptop-16gb", max_kl=100.0, min_tokens_per_s=0.1, trust_contended=True)
    smallest = min(MEASURED, key=lambda v: _metrics(store)[v]["weight_bytes"])
    assert decision.recommended.variant == smallest
    assert all(c.passed for c in decision.candidates)
    assert "passes every limit but holds" in decision.summary()


def test_kl_limit_between_two_variants_rejects_the_worse_on_its_upper_bound(store):
    m = _metrics(store)
    bound4 = quality_bound(m["int4-g32"], "kl_divergence")[0]
    bound2 = quality_bound(m["int2-g64"], "kl_divergence")[0]
    assert bound4 < bound2
    decision = decide(store, "laptop-16gb", max_kl=(bound4 + bound2) / 2)
    assert decision.recommended.variant == "int4-g32"
    int2 = next(c for c in decision.candidates if c.variant == "int2-g64")
    assert [c.limit for c in int2.failed] == ["KL"] and "95% upper bound" in int2.failures()


def test_the_interval_not_the_point_estimate_decides(store):
    m = _metrics(store)["int4-g32"]
    low, high = m["kl_divergence"], m["kl_divergence_ci95"][1]
    decision = decide(store, "laptop-16gb", max_kl=(low + high) / 2)
    int4 = next(c for c in decision.candidates if c.variant == "int4-g32")
    assert not int4.passed and int4.failed[0].limit == "KL"
    assert decision.recommended.variant == "fp32"


def test_a_device_that_does_not_run_the_runtime_rules_it_out(store):
    decision = decide(store, "raspberry-pi-5-8gb", max_kl=100.0)  # runs fp32/fp16/bf16 and exported artifacts
    packed = next(c for c in decision.candidates if c.variant == "int4-g32")
    assert packed.failed[0].limit == "device"
    assert decision.recommended.variant == "fp32"


def _row(variant, kl_high, tokens_per_s, weight_bytes, model="default", **settings):
    metrics = {"kl_divergence": kl_high / 2, "kl_divergence_ci95": [0.0, kl_high], "decode_tokens_per_s": tokens_per_s,
               "weight_bytes": weight_bytes, "latency_ms_p99": 1000 / tokens_per_s, "latency_indicative": ["p99"]}
    return Result(model=model, variant=variant, metrics=metrics, model_revision="hand-made",
                  settings={"eval_sha256": "abc", "context": 128, "stride": 64, "max_tokens": 512, "baseline": "fp32",
                            **settings})


def test_nothing_qualifies_names_the_closest_candidate_and_its_constraint():
    rows = [_row("fp32", 0.0, 20.0, 27_000_000), _row("int4-g32", 0.02, 50.0, 11_000_000),
            _row("int2-g64", 0.5, 60.0, 6_000_000)]
    decision = decide(rows, "laptop-16gb", max_kl=0.01, min_tokens_per_s=100.0)
    assert decision.recommended is None
    # every row is too slow; int4-g32 and int2-g64 also miss the KL limit, fp32 misses only the speed
    assert decision.closest.variant == "fp32" and [c.limit for c in decision.closest.failed] == ["tokens/s"]
    summary = decision.summary()
    assert "nothing qualifies" in summary and "closest to passing: fp32" in summary and "fails only" in summary


def test_memory_that_does_not_fit_fails_the_plan_and_p99_flags_few_samples():
    rows = [_row("fp32", 0.0, 20.0, 27_000_000), _row("int4-g32", 0.02, 50.0, 11_000_000)]
    decision = decide(rows, "laptop-8gb", max_p99_ms=100.0, context=2_000_000)
    assert decision.recommended is None
    assert all(c.failed[0].limit == "memory" and "does not fit laptop-8gb" in c.failed[0].text
               for c in decision.candidates)
    fine = decide(rows, "laptop-8gb", max_p99_ms=100.0, context=512)
    assert fine.recommended.variant == "int4-g32" and "indicative" in fine.summary()


def test_rows_scored_on_other_tokens_are_left_out():
    rows = [_row("int2-g64", 0.001, 60.0, 6_000_000, eval_sha256="other"), _row("fp32", 0.0, 20.0, 27_000_000)]
    decision = decide(rows, "laptop-16gb", max_kl=0.01)
    assert [c.variant for c in decision.candidates] == ["fp32"] and decision.left_out == 1


def test_bad_input_says_what_to_do(tmp_path):
    with pytest.raises(InputError, match="several models"):
        decide([_row("fp32", 0.0, 20.0, 1), _row("fp32", 0.0, 20.0, 1, model="smollm2-135m")], max_kl=0.1)
    with pytest.raises(InputError, match="edgekit compare"):
        decide(tmp_path / "missing.sqlite")
    with pytest.raises(InputError, match="no measured comparison"):
        decide([])


def test_cli_decide_prints_the_pick_and_fails_when_nothing_qualifies(store, capsys):
    assert main(["decide", "--store", str(store.path), "--device", "laptop-16gb", "--max-kl", "100"]) == 0
    assert "recommended:" in capsys.readouterr().out
    assert main(["decide", "--store", str(store.path), "--max-kl", "100", "--min-tokens-per-s", "1e12"]) == 1
    assert "nothing qualifies" in capsys.readouterr().out
