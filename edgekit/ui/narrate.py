"""Closing texts rendered from the figures of the run that produced them.

A notebook's "What you saw" written by hand drifts from its outputs the first time a setting,
a model or a library version changes. Here the text is a template whose blanks are filled
from the figures that run computed (``{ppl:.2f}``, ``{best}``): a claim cannot outlive the
number it rests on, and a template that names a figure the run did not produce fails the
cell (and so the notebook under nbval) instead of printing a stale or empty sentence.

Templates use Python's format syntax (:class:`string.Formatter`): ``{name}``, ``{name:.1f}``,
``{name[key]}``, ``{name.attr}``; ``{{`` for a literal brace. :func:`choose` picks a phrase
from a condition of the run, so a sentence's direction (above/below, passes/fails) is computed
too.
"""
from __future__ import annotations

from string import Formatter
from typing import Mapping

from IPython.display import Markdown  # IPython comes with Jupyter; the library does not need it otherwise

from edgekit.core.errors import InputError


class MissingFigureError(InputError, KeyError):
    """A template names a figure the run did not compute."""

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0] if self.args else ""


def fields(template: str) -> list[str]:
    """The figure names a template uses, in order of first use (``{a.b[0]:.2f}`` uses ``a``)."""
    names: list[str] = []
    for _, field, spec, _ in Formatter().parse(template):
        if field is None:
            continue
        if field == "" or field.isdigit():
            raise InputError("a template names its figures ({ppl}, not {} or {0})")
        name = field.split(".", 1)[0].split("[", 1)[0]
        if name not in names:
            names.append(name)
        if spec and "{" in spec:
            names += [n for n in fields(spec) if n not in names]
    return names


def text(template: str, figures: Mapping | None = None, **more) -> str:
    """``template`` with its blanks filled from ``figures`` (and keyword figures); raises
    :class:`MissingFigureError` naming every figure the template uses that was not given."""
    values = {**(figures or {}), **more}
    missing = [name for name in fields(template) if name not in values]
    if missing:
        raise MissingFigureError(f"the text names figure(s) this run did not compute: {', '.join(missing)}; "
                                 f"computed: {', '.join(sorted(values)) or 'none'}")
    return template.format(**values)


def render(template: str, figures: Mapping | None = None, **more):
    """The filled template as Markdown for a notebook cell's output (:func:`text` for the rules)."""

    return Markdown(text(template, figures, **more))


def choose(condition: bool, if_true: str, if_false: str) -> str:
    """The phrase a condition of the run calls for: ``choose(delta > 0, "above", "below")``."""
    return if_true if condition else if_false
