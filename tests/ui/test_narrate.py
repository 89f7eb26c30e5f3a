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
    """Each notebook's "What you saw" is a heading and then the cell rendering its lesson from the run's figures
    (edgekit.ui.lessons), so no closing claim is hand-written beside the outputs it describes."""
    cells = nbformat.read(path, as_version=4).cells
    heads = [i for i, c in enumerate(cells)
             if c.cell_type == "markdown" and c.source.lstrip().startswith("## What you saw")]
    assert len(heads) == 1, f"{path.name}: one '## What you saw' heading, found {len(heads)}"
    (i,) = heads
    assert cells[i].source.strip() == "## What you saw", f"{path.name}: the closing's text belongs in the render cell"
    render_cell = cells[i + 1] if i + 1 < len(cells) else None
    assert render_cell is not None and render_cell.cell_type == "code" \
        and "closing(" in render_cell.source, f"{path.name}: follow 'What you saw' with a cell calling closing()"


def test_predicates_read_both_sides_of_an_interval_alike():
    from edgekit.ui.narrate import reads, side
    assert side([0.1, 0.5]) == 1 and side([-0.5, -0.1]) == -1 and side([-0.2, 0.3]) == 0
    assert side([float("nan"), float("nan")]) == 0 and side(None) == 0  # no interval: no claim
    assert reads([1.02, 1.3], "faster", "slower", "same", value=1.0) == "faster"
    assert reads([0.7, 0.98], "faster", "slower", "same", value=1.0) == "slower"


def test_speed_reading_claims_nothing_from_a_contended_row():
    from edgekit.ui.narrate import speed_reading
    assert speed_reading([1.2, 1.5]) == "faster"
    assert speed_reading([0.9, 1.1]) == "no resolved difference"
    assert speed_reading([1.2, 1.5], contended=True) == "not comparable: contended"


def test_pareto_front_never_rewards_noise():
    from edgekit.ui.narrate import loss_bound, on_front
    # int4-g128 sits below zero within noise; its |Δ| bound weighs its noise, so the smaller, resolved int4-g32 is
    # not pushed off the front by a negative mean
    points = {"int8": (13.2, loss_bound([-0.24, 0.01])), "int4-g128": (10.9, loss_bound([-1.64, 1.11])),
              "int4-g32": (11.35, loss_bound([0.33, 0.65]))}
    assert on_front(points) == ["int8", "int4-g128", "int4-g32"]
    points["mixed"] = (11.35, 1.7)
    assert "mixed" not in on_front(points)


def test_trend_ranking_and_formatting():
    from edgekit.ui.narrate import gib, listing, mb, ranking, sig, trend
    assert trend([1, 2, 3]) == "rises" and trend([3, 2, 1]) == "falls" and trend([1, 3, 2]) == "not monotone"
    assert trend([1.0, 1.05, 0.98], tolerance=0.1) == "holds level"
    assert ranking({"a": 2.0, "b": float("nan"), "c": 1.0}) == ["c", "a", "b"]
    assert listing([]) == "none" and listing(["a", "b"]) == "a and b"
    assert (sig(0.14606043696403503), sig(49.5623), sig(1234.5), sig(1.200113e-09)) == \
        ("0.146", "49.6", "1,230", "1.20e-09")
    assert mb(10_909_000) == "10.91 MB" and gib(5.36 * 2**30) == "5.36 GiB"


def test_readable_tables_round_for_reading():
    import pandas as pd

    from edgekit.ui.tables import readable
    frame = pd.DataFrame({"variant": ["fp32", "int4"], "KL": [0.0, 0.14606043696403503],
                          "weights MB": [27.2834, 10.909], "Δppl 95% CI": [[0.0, 0.0], [0.3312, 0.6519]],
                          "windows": [15, 15], "p99 ms": [None, 12.75]})
    html = readable(frame).to_html()
    for shown in ("0.146", "27.28", "10.91", "[0.331, 0.652]", "15", "12.8"):
        assert shown in html
    assert "0.14606" not in html and "27.2834" not in html
