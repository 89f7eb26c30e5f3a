"""The stored notebooks are evidence a reader can trust: executed at one clean revision, one at a time on a quiet
machine, and reading cleanly (no empty outputs, no frozen progress bars, numbers formatted for reading, the run time
each one states near what it took).

nbval re-executes the notebooks to check they still run; this file checks what is stored, which is what an
instructor reads. Each notebook's first output is :func:`edgekit.ui.run_record`'s line.
"""
from __future__ import annotations

import json
import re
from datetime import datetime
from html.parser import HTMLParser
from pathlib import Path

import pytest

from edgekit.ui.record import PATTERN

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))
MAX_LOAD_PER_CORE = 1.5
RUN_TIME = re.compile(r"\*\*Run time:\*\* about (?P<amount>\d+(?:\.\d+)?) (?P<unit>seconds|minutes?)")
DECIMAL = re.compile(r"(?<![\w.])[-+]?\d[\d,]*\.\d+(?![\w.])")


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def outputs(nb: dict):
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            for out in cell.get("outputs", []):
                yield cell, out


def output_text(out: dict) -> str:
    if out["output_type"] == "stream":
        return out.get("text", "") if isinstance(out.get("text"), str) else "".join(out.get("text", []))
    data = out.get("data", {})
    return "".join(v if isinstance(v, str) else "".join(v) if isinstance(v, list) else json.dumps(v)
                   for v in data.values())


def record(nb: dict) -> dict | None:
    for _, out in outputs(nb):
        found = PATTERN.search(output_text(out))
        return found.groupdict() if found else None
    return None


def significant_digits(number: str) -> int:
    digits = number.lstrip("+-").replace(",", "").replace(".", "").lstrip("0")
    return len(digits)


def raw(number: str) -> bool:
    """More than 4 significant digits, other than a size at 2 decimals (``538.05`` MB reads as it should)."""
    return significant_digits(number) > 4 and len(number.rsplit(".", 1)[1]) != 2


class TableCells(HTMLParser):
    """The text of every <td> of an HTML table."""

    def __init__(self) -> None:
        super().__init__()
        self.cells, self._in = [], False

    def handle_starttag(self, tag, attrs):
        if tag == "td":
            self._in, self._text = True, ""

    def handle_endtag(self, tag):
        if tag == "td" and self._in:
            self.cells.append(self._text.strip())
            self._in = False

    def handle_data(self, data):
        if self._in:
            self._text += data


def table_cells(nb: dict) -> list[str]:
    parser = TableCells()
    for _, out in outputs(nb):
        html = out.get("data", {}).get("text/html")
        if html:
            parser.feed(html if isinstance(html, str) else "".join(html))
    return parser.cells


@pytest.fixture(scope="module")
def records():
    return {p.name: record(load(p)) for p in NOTEBOOKS}


def test_every_notebook_opens_with_its_run_record(records):
    missing = [name for name, rec in records.items() if rec is None]
    assert not missing, f"no run record as the first output: {missing}"


def test_one_clean_revision_across_notebooks(records):
    revisions = {rec["revision"] for rec in records.values() if rec}
    assert len(revisions) == 1, f"notebooks from different revisions: {revisions}"
    dirty = [name for name, rec in records.items() if rec and rec["tree"] != "clean"]
    assert not dirty, f"executed from a dirty tree: {dirty}"


def test_executed_on_a_quiet_machine(records):
    loaded = {name: rec["load"] for name, rec in records.items()
              if rec and float(rec["load"]) > MAX_LOAD_PER_CORE * int(rec["cores"])}
    assert not loaded, f"load above {MAX_LOAD_PER_CORE} per core at execution: {loaded}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_empty_outputs(path):
    nb = load(path)
    widgets = nb["metadata"].get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
    empty = []
    for cell, out in outputs(nb):
        view = out.get("data", {}).get("application/vnd.jupyter.widget-view+json")
        if view is not None:
            if view.get("model_id") not in widgets:
                empty.append(cell["source"][:1])
        elif not output_text(out).strip():
            empty.append(cell["source"][:1])
    assert not empty, f"{len(empty)} empty output(s), in cells starting {empty[:3]}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_progress_bars_stored_at_their_end(path):
    widgets = load(path)["metadata"].get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {})
    frozen = [(s["state"].get("value"), s["state"].get("max")) for s in widgets.get("state", {}).values()
              if s["model_name"] in ("FloatProgressModel", "IntProgressModel")
              and s["state"].get("value", 0) < s["state"].get("max", 100)]
    assert not frozen, f"progress bars stored mid-way (value, max): {frozen}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_tables_show_numbers_for_reading(path):
    found = [n for cell in table_cells(load(path)) for n in DECIMAL.findall(cell) if raw(n)]
    assert not found, f"rendered table numbers with more than 4 significant digits: {found[:5]}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_stated_run_time_matches_the_run(path):
    nb = load(path)
    intro = "".join(nb["cells"][0]["source"])
    stated = RUN_TIME.search(intro)
    assert stated, "the first cell states no '**Run time:** about N minutes'"
    seconds = float(stated["amount"]) * (1 if stated["unit"] == "seconds" else 60)
    times = [c["metadata"]["execution"] for c in nb["cells"]
             if c["cell_type"] == "code" and "execution" in c.get("metadata", {})]
    assert times, "no execution times stored (execute with nbclient/nbconvert)"
    start = datetime.fromisoformat(times[0]["iopub.execute_input"].replace("Z", "+00:00"))
    end = datetime.fromisoformat(times[-1]["shell.execute_reply"].replace("Z", "+00:00"))
    took = (end - start).total_seconds()
    assert seconds / 3 <= took <= 1.5 * seconds + 30, f"states about {seconds:.0f} s, took {took:.0f} s"
