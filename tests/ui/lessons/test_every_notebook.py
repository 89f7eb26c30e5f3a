"""Every notebook closes with its lessons module's text: rendered from its run, never fixed."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from edgekit.core.errors import InputError
from edgekit.ui.lessons import lesson_module

NOTEBOOKS = sorted((Path(__file__).resolve().parents[3] / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_the_notebook_closes_with_its_lesson(path):
    cells = json.loads(path.read_text())["cells"]
    code = "".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    called = re.search(rf"closing\(\s*[\"']{path.stem}[\"']", code)
    assert called, f"{path.name} does not call closing({path.stem!r}, …)"
    assert callable(lesson_module(path.stem).closing)


def test_a_notebook_without_a_lesson_is_named():
    with pytest.raises(InputError, match="add edgekit/ui/lessons/no_such_notebook.py"):
        lesson_module("99_no_such_notebook")
