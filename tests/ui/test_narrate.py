"""edgekit.ui.narrate: closing texts filled from the run's figures, failing loudly on a missing one."""
from pathlib import Path

import nbformat
import pytest

from edgekit.core.errors import EdgekitError
from edgekit.ui.narrate import MissingFigureError, choose, fields, render, text


def test_fills_figures_with_their_formats():
    out = text("fp32 perplexity {ppl:.2f} over {run[windows]} windows; {best} is {choose_word}.",
               {"ppl": 44.7712, "run": {"windows": 15}}, best="nf4", choose_word=choose(0.4 > 0, "worse", "better"))
    assert out == "fp32 perplexity 44.77 over 15 windows; nf4 is worse."


def test_a_missing_figure_fails_naming_it():
    with pytest.raises(MissingFigureError, match="did not compute: kl, top1") as caught:
        text("KL {kl:.3f}, top-1 {top1:.1%}, ppl {ppl}", ppl=3.0)
    assert isinstance(caught.value, EdgekitError)
    with pytest.raises(MissingFigureError, match="width"):
        text("{ppl:{width}.2f}", ppl=1.0)  # a figure used inside a format spec counts too


def test_fields_and_escapes():
    assert fields("{a.b[0]:.2f} {{literal}} {c} {a}") == ["a", "c"]
    assert text("{{not a figure}} {x}", x=1) == "{not a figure} 1"
    with pytest.raises(EdgekitError, match="names its figures"):
        text("{} and {0}")


def test_render_is_markdown_for_the_notebook():
    md = render("**{n}** variants", n=3)
    assert md._repr_markdown_() == "**3** variants"
    with pytest.raises(MissingFigureError):
        render("{n} and {m}", n=3)


NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_closing_is_rendered_from_its_run(path):
    """Each notebook's "What you saw" is a heading and then a cell that fills its text from the run's figures
    (edgekit.ui.narrate), so no closing claim is hand-written beside the outputs it describes."""
    cells = nbformat.read(path, as_version=4).cells
    heads = [i for i, c in enumerate(cells)
             if c.cell_type == "markdown" and c.source.lstrip().startswith("## What you saw")]
    assert len(heads) == 1, f"{path.name}: one '## What you saw' heading, found {len(heads)}"
    (i,) = heads
    assert cells[i].source.strip() == "## What you saw", f"{path.name}: the closing's text belongs in the render cell"
    render_cell = cells[i + 1] if i + 1 < len(cells) else None
    assert render_cell is not None and render_cell.cell_type == "code" \
        and "from edgekit.ui import" in render_cell.source \
        and "render(" in render_cell.source, f"{path.name}: follow 'What you saw' with a cell calling narrate.render"
