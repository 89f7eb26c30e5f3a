"""The tuning sweep's ranking on synthetic timing tables; a real sweep whose winner lands in the manifest."""
import math

import pandas as pd
import pytest
import torch

from edgekit.core.errors import EdgekitError, InputError
from edgekit.workflows.tuning import TuningReport, grid, rank, torch_factory, tune


def _table(rows):
    return pd.DataFrame([{"settings": s, "latency_ms_p50": p50, "latency_ms_p99": p99, "error": err}
                         for s, p50, p99, err in rows])


def test_grid_is_the_cartesian_product():
    assert grid(a=[1, 2], b=[True, False]) == [{"a": 1, "b": True}, {"a": 1, "b": False},
                                               {"a": 2, "b": True}, {"a": 2, "b": False}]
    assert grid() == [{}]


def test_rank_by_p50_then_p99_failures_last_and_gain_over_default():
    table = _table([({"t": 1}, 20.0, 30.0, None),
                    ({"t": 2}, 10.0, 40.0, None),
                    ({"t": 3}, 10.0, 12.0, None),
                    ({"t": 4}, math.inf, math.inf, "RuntimeError: refused"),
                    ({"t": 5}, 15.0, 15.0, None)])
    ranked = rank(table, default={"t": 1})
    assert [s["t"] for s in ranked["settings"]] == [3, 2, 5, 1, 4]
    assert list(ranked["rank"]) == [1, 2, 3, 4, 5]
    assert ranked["speedup_vs_default"].iloc[0] == pytest.approx(2.0)
    report = TuningReport(ranked, {"t": 1})
    assert report.best == {"t": 3} and report.gain_over_default == pytest.approx(2.0)


def test_rank_without_default_has_no_gain_and_all_failed_raises():
    ranked = rank(_table([({"t": 1}, 5.0, 6.0, None)]))
    assert math.isnan(TuningReport(ranked, None).gain_over_default)
    failed = rank(_table([({"t": 1}, math.inf, math.inf, "x")]))
    with pytest.raises(EdgekitError):
        TuningReport(failed, None).best
    with pytest.raises(InputError):
        rank(pd.DataFrame())


def test_real_sweep_records_failures_and_stores(default_model, tmp_path):
    from edgekit.measure.store import ResultStore

    store = ResultStore(tmp_path / "r.sqlite")
    threads = torch.get_num_threads()
    report = tune(torch_factory("fp32", default_model), [{"bogus": 1}], torch.arange(5, 20)[None],
                  default={"threads": 1}, new_tokens=3, runs=1, store=store, model="default", variant="fp32",
                  progress=False)
    assert torch.get_num_threads() == threads            # process-wide setting restored
    table = report.table
    assert table["error"].iloc[-1].startswith("InputError") and table["settings"].iloc[-1] == {"bogus": 1}
    assert pd.isna(table["error"].iloc[0]) and table["latency_ms_p50"].iloc[0] > 0
    assert report.best == {"threads": 1} and report.gain_over_default == 1.0
    stored = store.results(kind="tuning")
    assert len(stored) == 2 and [r.status for r in stored] == ["ok", "error"]


def test_onnx_winner_written_to_manifest_and_used(onnx_artifact, tmp_path):
    import shutil

    from edgekit.artifacts.manifest import read_manifest
    from edgekit.runtimes import load_artifact
    from edgekit.workflows.tuning import ort_factory, write_best

    onnx_int4_artifact = shutil.copytree(onnx_artifact("onnx-int4-g32"), tmp_path / "onnx-int4-g32")

    report = tune(ort_factory(onnx_int4_artifact), [{"intra_op_threads": 1, "io_binding": False}],
                  torch.arange(5, 20)[None], new_tokens=3, runs=1, progress=False)
    assert report.best == {"intra_op_threads": 1, "io_binding": False}   # the only candidate wins
    settings = write_best(onnx_int4_artifact, report)
    assert read_manifest(onnx_int4_artifact).data["runtime_settings"] == settings
    tuning = read_manifest(onnx_int4_artifact).data["tuning"]               # with the interval it won by
    assert tuning["winner"] == report.best and tuning["tie"] is False and "decode_tokens_per_s_ci95" in tuning
    runner = load_artifact(onnx_int4_artifact)             # verification still passes
    assert runner.settings["intra_op_threads"] == 1 and runner.settings["io_binding"] is False
    runner.close()



def test_each_candidate_carries_its_ratio_to_the_default(default_model):
    report = tune(torch_factory("fp32", default_model), [{"threads": 2}], torch.arange(5, 20)[None],
                  default={"threads": 1}, new_tokens=4, runs=3, progress=False)
    rows = {r["label"]: r for r in report.table.to_dict("records")}
    assert rows["threads=1"]["speed_ratio"] == pytest.approx(1.0)
    low, high = rows["threads=2"]["speed_ratio_ci95"]
    assert 0 < low <= rows["threads=2"]["speed_ratio"] <= high
