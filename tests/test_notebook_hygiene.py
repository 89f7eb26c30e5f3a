"""The stored outputs of the notebooks hold no litter: no warnings, no progress bars frozen at 0%, no path of
the machine that ran them. (nbval re-executes the notebooks; this reads what a learner opens.)"""
import json
import re
from pathlib import Path

import pytest

from edgekit.artifacts.manifest import portable_model

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
LITTER = re.compile(r"Warning|WARNING|(?<!\d)0%\||(?<![\w.~])/(?:work|home|tmp|root|Users|usr|opt|var|private)/")


def stored_texts(notebook: Path):
    for index, cell in enumerate(json.loads(notebook.read_text())["cells"]):
        for output in cell.get("outputs", []):
            texts = ["".join(output["text"])] if "text" in output else []
            texts += ["".join(v) if isinstance(v, list) else str(v) for k, v in output.get("data", {}).items()
                      if k.startswith("text/")]
            texts += ["\n".join(output.get("traceback", []))]
            for text in texts:
                yield index, text


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_stored_outputs_hold_no_litter(notebook):
    found = [(i, text[max(0, m.start() - 60): m.end() + 40]) for i, text in stored_texts(notebook)
             for m in LITTER.finditer(text)]
    assert not found, f"{notebook.name}: {found[:5]}"


def test_the_litter_pattern_catches_what_it_should():
    assert LITTER.search("score fp32:   0%|          | 0/15")
    assert LITTER.search("/work/main/.venv/lib/python3.11/site-packages/x.py:1: TracerWarning: ...")
    assert LITTER.search("source_model  /home/ann/models/llama")
    assert not LITTER.search("score fp32: 100%|##########| 15/15; see data/models/x and https://a.b/work/c")


def test_manifests_name_the_model_without_the_machine_path(tmp_path, monkeypatch):
    from edgekit.models.names import MODELS

    assert portable_model(str(Path(MODELS["default"].folder).resolve())) == "default"
    assert portable_model("default") == "default" and portable_model("org/name") == "org/name"
    model = tmp_path / "models" / "mine"
    model.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert portable_model(str(model)) == "models/mine"
    monkeypatch.chdir(model)
    assert portable_model(str(tmp_path / "models")) == "models"


def test_notebooks_import_only_the_public_face():
    """A notebook imports from ``edgekit`` and ``edgekit.ui``, never a room's module (the face is the API)."""
    inside = []
    for notebook in NOTEBOOKS:
        for cell in json.loads(notebook.read_text())["cells"]:
            if cell["cell_type"] == "code":
                for line in "".join(cell["source"]).splitlines():
                    found = re.match(r"\s*(?:from|import)\s+(edgekit[\w.]*)", line)
                    if found and found.group(1) not in ("edgekit", "edgekit.ui"):
                        inside.append(f"{notebook.name}: {line.strip()}")
    assert not inside, inside
