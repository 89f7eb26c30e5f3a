"""edgekit.report and ``edgekit compare --report``: a real comparison of the default model
(fp32, packed int4 and one variant that fails to build) written as HTML and Markdown."""
import base64
import json
import re

import pytest

from edgekit.cli import main
from edgekit.errors import EdgekitError, InputError
from edgekit.report import comparison_frame, device_memory_frame, write_report
from edgekit.results import ResultStore

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
