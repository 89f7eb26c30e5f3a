"""Every notebook keeps its settings in one cell tagged ``parameters`` that reads the model
from ``EDGEKIT_MODEL``, so papermill can run it for another model headless; papermill runs
the dashboard notebook with overridden parameters."""
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _parameter_cells(path: Path) -> list:
    nb = nbformat.read(path, as_version=4)
    return [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]


def test_there_are_notebooks():
    assert any(p.name == "07_compare_dashboard.ipynb" for p in NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_one_parameters_cell_reading_the_model_from_the_environment(path):
    cells = _parameter_cells(path)
    assert len(cells) == 1, f"{path.name} has {len(cells)} cells tagged 'parameters'; keep every setting in one"
    (cell,) = cells
    assert cell.cell_type == "code"
    assert 'MODEL = os.environ.get("EDGEKIT_MODEL", "default")' in cell.source, \
        f'{path.name}: read the model as MODEL = os.environ.get("EDGEKIT_MODEL", "default")'


def test_papermill_runs_the_dashboard_with_other_parameters(tmp_path, monkeypatch):
    import papermill

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out.ipynb"
    papermill.execute_notebook(
        str(next(p for p in NOTEBOOKS if p.name == "07_compare_dashboard.ipynb")), str(out),
        parameters={"VARIANTS": ["fp32", "int2-g64"], "MAX_TOKENS": 256, "CONTEXT": 128, "STRIDE": 64,
                    "LATENCY_RUNS": 0, "PLAN_FOR": "compared model", "DEVICE": "raspberry-pi-5-8gb",
                    # the sweep cells over what the compare cells measured: every cell comes from the store, so
                    # the sweep section runs (tables, figures, report) without starting Ray a second time here
                    "SWEEP_MODELS": ["default"], "SWEEP_VARIANTS": ["fp32", "int2-g64"]},
        kernel_name="python3", progress_bar=False, cwd=str(tmp_path))
    nb = nbformat.read(out, as_version=4)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and "int2-g64" in injected[0].source
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "[('fp32', 'ok'), ('int2-g64', 'ok')]" in printed
    assert "report.html" in printed
    assert "[('default', 'fp32', 'ok'), ('default', 'int2-g64', 'ok')]" in printed
