"""compare's speed protocol end to end: rows with intervals and roofline, raw repetitions kept, a resumed
comparison paired against the baseline timed again in the same rounds."""
from edgekit.measure.quality import EvalSettings
from edgekit.measure.store import ResultStore
from edgekit.workflows.compare import LatencySettings, compare

SETTINGS = EvalSettings(128, 64, 256)
LATENCY = LatencySettings(prompt_tokens=8, new_tokens=3, runs=2)


def test_resumed_compare_pairs_new_rows_with_the_baseline(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKIT_HOME", str(tmp_path))
    store = ResultStore(tmp_path / "r.sqlite")
    first = compare("default", ["fp32", "int8"], settings=SETTINGS, latency=LATENCY, store=store, progress=False)
    assert [r.metrics["speed_protocol"] for r in first] == ["interleaved"] * 2
    assert first[0].metrics["speed_ratio_ci95"] == [1.0, 1.0] and first[1].metrics["speed_ratio_ci95"] is not None
    assert all(r.metrics["bound"] and r.metrics["bytes_per_token"] > r.metrics["weight_bytes"] for r in first)
    more = compare("default", ["fp32", "int8", "int4-g32"], settings=SETTINGS, latency=LATENCY, store=store,
                   progress=False, resume=True)
    assert [r.run_id for r in more[:2]] == [r.run_id for r in first]
    new = more[2].metrics
    assert new["speed_protocol"] == "interleaved" and new["repetitions"] == 2
    low, high = new["speed_ratio_ci95"]
    assert low <= new["speed_ratio"] <= high
    kept = store.repetitions(run_id=more[2].run_id)
    assert set(kept["variant"]) == {"int4-g32"} and len(kept) == 2   # the baseline's re-timing is not stored as a row
