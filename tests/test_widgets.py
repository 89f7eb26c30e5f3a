"""edgekit.widgets.Dashboard: wired to the real comparison without a frontend; a failing
variant shows its reason and the rest go on; earlier runs and the report work from it."""
import pytest

from edgekit.results import ResultStore
from edgekit.registry import known_variants
from edgekit.widgets import Dashboard

FAST = dict(context=128, stride=64, max_tokens=256, latency_runs=0)


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    store = ResultStore(tmp_path_factory.mktemp("dash") / "r.sqlite")
    dashboard = Dashboard(variants=("fp32", "int2-g64", "int8:threshold=abc"), store=store, **FAST)
    return dashboard, dashboard.run()


def test_offers_pytorch_and_onnx_variants_and_device_profiles(tmp_path):
    dashboard = Dashboard(store=ResultStore(tmp_path / "r.sqlite"))
    options = list(dashboard.variants.options)
    assert options[: len(known_variants())] == known_variants()
    assert {"fp32", "nf4", "int4-g128", "onnx-int8"} <= set(options)
    assert "laptop-16gb" in dashboard.device.options and "llama-2-7b" in dashboard.plan_model.options
    assert "edgekit-dashboard" in dashboard.widget._dom_classes


def test_run_fills_progress_table_and_plots(ran):
    dashboard, results = ran
    assert [(r.variant, r.status) for r in results] == [("fp32", "ok"), ("int2-g64", "ok"), ("int8:threshold=abc", "error")]
    assert dashboard.progress.value == dashboard.progress.max == 3
    assert dashboard.status.value.startswith("<b>done</b>") and "✗ int8:threshold=abc" in dashboard.status.value
    assert not dashboard.run_button.disabled
    frame = dashboard.frame()
    assert list(frame["variant"]) == ["fp32", "int2-g64", "int8:threshold=abc"]
    assert "abc" in frame["error"].iloc[2] and frame["error"].iloc[:2].isna().all()
    assert frame["KL"].iloc[1] > 0
    assert dashboard.table.outputs and dashboard.plots.outputs[0]["data"]["image/png"]
    assert set(dashboard.memory_frame()["variant"]) == {"fp32", "int2-g64", "int8:threshold=abc"}


def test_earlier_runs_and_report(ran, tmp_path):
    dashboard, results = ran
    assert dashboard.earlier.options == ()  # the only run is the current one
    # a second dashboard on the same store sees the first run and lays it beside its own
    second = Dashboard(variants=("fp32",), store=dashboard.store, **FAST)
    assert [value for _, value in second.earlier.options] == [results[0].run_id]
    second.run()
    second.earlier.value = (results[0].run_id,)
    frame = second.frame()
    assert frame["run"].iloc[0] == "this run" and frame["run"].nunique() == 2 and len(frame) == 4
    page = second.write_report(tmp_path / "report").read_text()
    assert "int2-g64" in page and "data:image/png;base64," in page


def test_a_bad_model_is_shown_in_place(tmp_path):
    dashboard = Dashboard(model=str(tmp_path / "no-model-here"), store=ResultStore(tmp_path / "r.sqlite"), **FAST)
    assert dashboard.run() == []
    (shown,) = dashboard.messages.outputs
    assert "ModelSourceError" in shown["data"]["text/html"] or "Error" in shown["data"]["text/html"]
    assert not dashboard.run_button.disabled
