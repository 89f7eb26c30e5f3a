"""edgekit.ui.widgets.Dashboard: wired to the real comparison without a frontend; a failing
variant shows its reason and the rest go on; earlier runs and the report work from it."""
import html

import pytest

from edgekit.measure.store import ResultStore
from edgekit.ui.widgets import Dashboard
from edgekit.variants.registry import known_variants

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
    assert [(r.variant, r.status) for r in results] == [("fp32", "ok"), ("int2-g64", "ok"),
                                                        ("int8:threshold=abc", "error")]
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


def test_typed_variants_join_the_picked_ones_and_bad_ones_are_refused(tmp_path):
    from edgekit.core.errors import VariantError

    dash = Dashboard(store=ResultStore(tmp_path / "r.sqlite"), variants=("fp32", "int8"))
    dash.typed.value = "int3-g64  nf4:double_quant=true; int8"
    assert dash.chosen_variants() == ["fp32", "int8", "int3-g64", "nf4:double_quant=true"]
    dash.typed.value = "int5-g7"
    with pytest.raises(VariantError):
        dash.chosen_variants()


def test_quant_knobs_redraw_the_grid_of_the_scheme_they_describe():
    import torch

    from edgekit.quantizers.reference import Scheme, group_grid
    from edgekit.ui.widgets import QuantKnobs

    weight = torch.randn(8, 64, generator=torch.Generator().manual_seed(0))
    knobs = QuantKnobs(weight, bits=4, granularity="group", group_size=32)
    four = knobs.figures
    knobs.bits.value = 8
    assert knobs.scheme() == Scheme(8, "group", 32)
    assert knobs.figures["relative_error"] < four["relative_error"] / 8  # 16x finer steps
    knobs.symmetric.value = False
    assert knobs.figures["scheme"] == "asym-int8-b32"
    values, levels = group_grid(weight, Scheme(3, "group", 32))
    assert len(levels) == 7 and len(values) == 32 and float(values.abs().max()) == float(weight.abs().max())
    assert float(levels.max()) == pytest.approx(float(weight.abs().max()))  # symmetric: the top level is absmax
    knobs.codebook.value = "nf4"
    assert knobs.scheme().codebook == "nf4" and knobs.bits.disabled
    values, levels = group_grid(weight, knobs.scheme())
    assert len(levels) == 16 and len(values) == 32


def test_sweep_mode_runs_two_models_on_ray_and_fills_a_section_per_model(tmp_path):
    """Sweep mode: the default model and a typed folder (a tiny random-weight Llama), fp32 only: two Ray cells."""
    pytest.importorskip("ray")
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from make_random_checkpoint import PRESETS, write_checkpoint

    shape = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=256)
    tiny = str(write_checkpoint({**PRESETS["214m"], **shape}, tmp_path / "tiny"))
    dash = Dashboard(mode="sweep", models=("default", tiny), variants=("fp32",),
                     store=ResultStore(tmp_path / "r.sqlite"),
                     **FAST)
    assert dash.models.value == ("default",) and dash.typed_models.value == tiny  # a folder is typed, not picked
    assert dash.run_button.description == "Run sweep" and dash.model.layout.display == "none"
    seen = []
    dash.table.observe(lambda change: seen.append(len(dash.results)), names="outputs")
    results = dash.run()
    assert [(r.model, r.variant, r.status) for r in results] == [("default", "fp32", "ok"), (tiny, "fp32", "ok")]
    assert 1 in seen and 2 in seen  # the table was redrawn as each cell landed, not only at the end
    assert dash.progress.value == dash.progress.max == 2 and dash.progress.description == "cells"
    assert dash.status.value.startswith("<b>done</b>") and f"✓ {tiny} fp32" in dash.status.value
    frame = dash.frame()
    assert list(frame["model"]) == ["default", tiny] and list(frame["KL"]) == [0, 0]  # each against its own fp32
    assert len(dash.plots.outputs) == 2  # one figure per model
    assert {r.model for r in ResultStore(tmp_path / "r.sqlite").results()} == {"default", tiny}
    page = dash.write_report(tmp_path / "report").read_text()
    assert page.count("<section>") == 2

    dash.models.value, dash.typed_models.value = (), ""
    assert dash.run() == [] and "at least one model" in dash.messages.outputs[0]["data"]["text/html"]
    dash.mode.value = "compare"
    assert dash.run_button.description == "Run comparison" and dash.sweep_models.layout.display == "none"


def test_side_by_side_marks_where_the_variant_parts_from_fp32(tmp_path):
    dash = Dashboard(store=ResultStore(tmp_path / "r.sqlite"), variants=("fp32", "int2-g64"))
    assert dash.generate_variant.value == "int2-g64"
    dash.generate_tokens.value = 16
    parted = dash.generate()
    assert parted.first_difference is not None and parted.variant.variant == "int2-g64"
    (shown,) = dash.generation.outputs
    page = shown["data"]["text/html"]
    assert page.count("<mark") == 2 and f"then token {parted.same_tokens + 1} differs" in page
    assert html.escape(parted.variant.first) in page and not dash.generate_button.disabled
    dash.generate_variant.value = "int5-g7"
    assert dash.generate() is None and "VariantError" in dash.generation.outputs[0]["data"]["text/html"]


def test_picked_tasks_reach_the_comparison_and_join_the_table(tmp_path):
    dash = Dashboard(variants=("fp32", "int2-g64"), store=ResultStore(tmp_path / "r.sqlite"), **FAST)
    assert set(dash.tasks.options) == {"edgekit_lastword", "edgekit_nextline"} and dash.tasks.value == ()
    dash.tasks.value, dash.task_limit.value = ("edgekit_nextline",), 12
    results = dash.run()
    assert [r.status for r in results] == ["ok", "ok"]
    assert [r.metrics["tasks"]["edgekit_nextline"]["task_items"] for r in results] == [12, 12]
    assert results[0].settings["tasks"] == ["edgekit_nextline"] and results[0].settings["task_limit"] == 12
    frame = dash.frame()
    flips = [r.metrics["tasks"]["edgekit_nextline"] for r in results]
    assert list(frame["edgekit_nextline flips -/+"]) == [f"{m['flips_right_to_wrong']}/{m['flips_wrong_to_right']}"
                                                         for m in flips]
    assert flips[0]["flips_right_to_wrong"] == flips[0]["flips_wrong_to_right"] == 0  # the baseline against itself
    assert "edgekit_nextline McNemar p" in frame and "edgekit_lastword acc" not in frame
