"""edgekit.measure.store: the SQLite store keeps every finished result, exports CSV and JSON."""
import json
import sqlite3

import pandas as pd
import pytest

from edgekit.measure.quality import EvalSettings
from edgekit.measure.store import MIGRATIONS, Result, ResultStore
from edgekit.models.load import UNKNOWN_REVISION, model_revision
from edgekit.workflows.compare import compare


def test_write_and_read_back(tmp_path):
    store = ResultStore(tmp_path / "r.sqlite")
    first = Result("default", "fp32", metrics={"perplexity": 12.5, "ci": [1.0, 2.0]}, settings={"context": 256})
    store.add(first)
    store.add(Result("default", "int8", metrics={"perplexity": 12.7}, run_id=first.run_id))
    store.add(Result("other", "nf4", status="error", error="boom"))
    back = store.results(model="default")
    assert [r.variant for r in back] == ["fp32", "int8"]
    assert back[0].metrics == {"perplexity": 12.5, "ci": [1.0, 2.0]} and back[0].settings == {"context": 256}
    assert back[0].environment["python"] and "torch" in back[0].environment["versions"]
    assert store.results(run_id=first.run_id)[1].variant == "int8"
    runs = store.runs()
    assert list(runs["variants"]) == [2, 1]
    reopened = ResultStore(tmp_path / "r.sqlite")  # a later session sees the same rows
    assert reopened.results(model="other")[0].error == "boom"


def test_results_record_which_weights_they_measured(tmp_path, default_model):
    """Runs on a retrained model keep the source name ("default") but not the revision."""
    store = ResultStore(tmp_path / "r.sqlite")
    store.add(Result("default", "fp32"))
    store.add(Result("default", "fp32", model_revision="sha256:000000000000"))  # e.g. before a retrain
    revisions = list(store.runs()["model_revision"])
    assert revisions == [model_revision(default_model), "sha256:000000000000"]
    assert list(store.dataframe()["model_revision"]) == revisions


def test_store_written_before_revisions_opens_and_reads(tmp_path):
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:
        db.execute(MIGRATIONS[0])  # the layout before revisions were recorded
        db.execute("INSERT INTO results (run_id, created, kind, model, variant, status, error, metrics, settings,"
                   " environment) VALUES ('r1', '2026-01-01T00:00:00', 'compare', 'default', 'fp32', 'ok', NULL,"
                   " '{}', '{}', '{}')")
    store = ResultStore(path)
    store.add(Result("default", "nf4"))
    old, new = store.results()
    assert old.model_revision == UNKNOWN_REVISION and new.model_revision.startswith("sha256:")


def test_export_csv_and_json(tmp_path):
    store = ResultStore(tmp_path / "r.sqlite")
    store.add(Result("default", "fp32", metrics={"perplexity": 12.5}, settings={"context": 256}))
    frame = pd.read_csv(store.export(tmp_path / "out.csv"))
    assert frame.loc[0, "variant"] == "fp32" and frame.loc[0, "perplexity"] == 12.5
    assert frame.loc[0, "setting_context"] == 256
    rows = json.loads(store.export(tmp_path / "out.json").read_text())
    assert rows[0]["metrics"]["perplexity"] == 12.5 and rows[0]["model"] == "default"


def test_interrupted_sweep_keeps_earlier_rows(tmp_path, default_model):
    """A sweep stopped after its first variant keeps that variant's row in the store."""
    store = ResultStore(tmp_path / "r.sqlite")

    def stop_after_first(result):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        compare(default_model, ["fp32", "int4-g32"], settings=EvalSettings(64, 32, 256), latency=None,
                store=store, on_result=stop_after_first, progress=False)
    rows = store.results()
    assert [r.variant for r in rows] == ["fp32"] and rows[0].status == "ok"
    assert rows[0].metrics["scored_tokens"] == 255


def test_failing_variant_is_recorded_and_the_sweep_goes_on(tmp_path, default_model):
    store = ResultStore(tmp_path / "r.sqlite")
    results = compare(default_model, ["fp32", "int4-g0", "int4-g64"], settings=EvalSettings(64, 32, 256),
                      latency=None, store=store, progress=False)
    assert [r.status for r in results] == ["ok", "error", "ok"]
    assert "must be a positive number of input columns" in results[1].error
    assert [r.variant for r in store.results()] == ["fp32", "int4-g0", "int4-g64"]
