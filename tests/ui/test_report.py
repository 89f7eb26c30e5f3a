"""edgekit.ui.report and ``edgekit compare --report``: a real comparison of the default model
(fp32, packed int4 and one variant that fails to build) written as HTML and Markdown."""
import base64
import json
import re

import pytest

from edgekit.cli import main
from edgekit.core.errors import EdgekitError, InputError
from edgekit.measure.store import ResultStore
from edgekit.ui.report import comparison_frame, device_memory_frame, write_report

# int8 with a threshold that is not a number: the builder raises, compare records the reason
VARIANTS = "fp32,int4-g128,int8:threshold=abc"


@pytest.fixture(scope="session")
def cli_run(tmp_path_factory):
    """One small comparison through the CLI, with its store, JSON and report folder."""
    folder = tmp_path_factory.mktemp("cli-report")
    code = main(["compare", "--variants", VARIANTS, "--context", "128", "--stride", "64", "--max-tokens", "512",
                 "--new-tokens", "4", "--runs", "1", "--store", str(folder / "r.sqlite"),
                 "--json", str(folder / "r.json"), "--report", str(folder / "report"),
                 "--device", "laptop-16gb", "--plan-for", "llama-2-7b"])
    assert code == 0
    return folder, ResultStore(folder / "r.sqlite").results()


def test_cli_writes_a_self_contained_html_and_markdown_report(cli_run):
    folder, results = cli_run
    page = (folder / "report" / "report.html").read_text()
    assert "<table" in page and "int4-g128" in page and "fp32" in page
    # the figure is embedded, not linked: a valid PNG in a data URI, and no other file referenced
    (data,) = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    assert base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"
    assert not re.search(r"""src=['"](?!data:)""", page)
    markdown = (folder / "report" / "report.md").read_text()
    assert "| variant |" in markdown and "![comparison](report.png)" in markdown
    assert (folder / "report" / "report.png").read_bytes()[:4] == b"\x89PNG"
    assert "## Memory plan: llama-2-7b on laptop-16gb, context 4096" in markdown
    # the measured numbers appear in the report as measured
    int4 = next(r for r in results if r.variant == "int4-g128")
    assert f"{int4.metrics['perplexity']:.4g}" in markdown


def test_failed_variant_is_reported_with_its_reason(cli_run):
    folder, results = cli_run
    failed = [r for r in results if r.status == "error"]
    assert [r.variant for r in failed] == ["int8:threshold=abc"]
    markdown = (folder / "report" / "report.md").read_text()
    section = markdown.split("## Failed variants", 1)[1].split("##", 1)[0]
    assert "int8:threshold=abc" in section and "abc" in section.split(":", 2)[-1]
    assert "Failed variants" in (folder / "report" / "report.html").read_text()
    assert json.loads((folder / "r.json").read_text())[-1]["status"] == "error"


def test_earlier_runs_are_laid_beside(cli_run, tmp_path):
    _, results = cli_run
    frame = comparison_frame(results, {"yesterday": results[:1]})
    assert list(frame.columns[:2]) == ["run", "variant"]
    assert list(frame["run"]) == ["this run"] * len(results) + ["yesterday"]
    assert "run" not in comparison_frame(results).columns
    page = write_report(results, tmp_path / "both", earlier={"yesterday": results[:1]}).read_text()
    assert "yesterday" in page


def test_memory_plan_against_a_device(cli_run, tmp_path):
    _, results = cli_run
    ok = [r for r in results if r.status == "ok"]
    frame = device_memory_frame("llama-2-7b", [r.variant for r in ok], "laptop-16gb", context=4096)
    fp32, int4 = frame.set_index("variant").loc[["fp32", "int4-g128"]].itertuples()
    assert fp32.total_bytes > int4.total_bytes > int4.weight_bytes > 0
    assert not fp32.fits  # 7B parameters in fp32 are 25 GiB of weights alone
    assert fp32.budget_bytes == int4.budget_bytes
    # the compared model itself: its measured peak RSS sits beside the plan
    own = device_memory_frame(ok[0].model, [r.variant for r in ok], "laptop-16gb", 128, measured=ok)
    assert own["peak_rss_bytes"].notna().all() and own["fits"].all()
    path = write_report(results, tmp_path / "plan", device="laptop-16gb", plan_model="llama-2-7b", context=4096)
    assert "Memory plan: llama-2-7b on laptop-16gb" in path.read_text()
    with pytest.raises(EdgekitError, match="device profile"):
        write_report(results, tmp_path / "bad", device="no-such-device")


def test_nothing_to_report(tmp_path):
    with pytest.raises(InputError, match="run a comparison first"):
        write_report([], tmp_path)


@pytest.fixture(scope="module")
def two_models(cli_run, tmp_path_factory):
    """The CLI run of the default model and a comparison of a tiny random-weight Llama: a sweep's two models."""
    import sys
    from pathlib import Path

    from edgekit.measure.quality import EvalSettings
    from edgekit.workflows.compare import compare

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from make_random_checkpoint import PRESETS, write_checkpoint

    shape = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=256)
    tiny = write_checkpoint({**PRESETS["214m"], **shape}, tmp_path_factory.mktemp("random-llama") / "tiny")
    other = compare(str(tiny), ["fp32", "int4-g32"], "eval", EvalSettings(context=64, stride=32, max_tokens=256),
                    latency=None, progress=False)
    return cli_run[1], other


def test_a_sweep_over_two_models_gets_a_section_and_a_baseline_per_model(two_models, tmp_path):
    first, second = two_models
    tiny = second[0].model
    frame = comparison_frame(first + second)
    assert frame.columns[0] == "model" and list(frame["model"]) == ["default"] * len(first) + [tiny] * 2
    assert list(frame["variant"]) == [r.variant for r in first + second]
    assert (frame.groupby("model", sort=False)["KL"].first() == 0).all()  # each model's first row is its baseline

    page = write_report(first + second, tmp_path / "sweep", device="laptop-16gb").read_text()
    assert "edgekit sweep: 2 models" in page
    sections = page.split("<section>")[1:]
    assert len(sections) == 2 and "<h2>default</h2>" in sections[0] and f"<h2>{tiny}</h2>" in sections[1]
    assert "int4-g128" in sections[0] and "int4-g128" not in sections[1]
    assert "int4-g32" in sections[1] and "int4-g32" not in sections[0]
    assert "Failed variants" in sections[0] and "Failed variants" not in sections[1]
    assert all(s.count("data:image/png;base64,") == 1 for s in sections)  # a figure each, its own Pareto front
    assert f"Memory plan: {tiny} on laptop-16gb" in sections[1]

    markdown = (tmp_path / "sweep" / "report.md").read_text()
    assert "![comparison](report-1.png)" in markdown and "![comparison](report-2.png)" in markdown
    assert all((tmp_path / "sweep" / f"report-{i}.png").read_bytes()[:4] == b"\x89PNG" for i in (1, 2))
    tiny_part = markdown.split(f"## {tiny}", 1)[1]
    fp32 = next(r for r in second if r.variant == "fp32")
    assert f"{fp32.metrics['perplexity']:.4g}" in tiny_part  # the random model's own baseline, in its own section


def test_earlier_runs_join_the_section_of_their_model(two_models):
    first, second = two_models
    frame = comparison_frame(first + second, {"yesterday": first[:1]})
    rows = frame[frame["run"] == "yesterday"]
    assert list(rows["model"]) == ["default"] and list(rows["variant"]) == ["fp32"]
    assert list(frame["model"]).index(second[0].model) > rows.index[0]  # after default's own rows
