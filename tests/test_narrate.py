"""edgekit.narrate: closing texts filled from the run's figures, failing loudly on a missing one."""
import pytest

from edgekit.errors import EdgekitError
from edgekit.narrate import MissingFigureError, choose, fields, render, text


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
