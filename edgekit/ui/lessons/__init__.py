"""Each notebook's closing ("What you saw"), a function of the figures its run computed.

One module per notebook, named after it without its number (``07_compare_dashboard.ipynb`` ->
``compare_dashboard.py``), each with ``closing(figures: dict) -> str`` returning Markdown. Every
comparative sentence in it is chosen by the predicates of :mod:`edgekit.ui.narrate` from the figures
(an interval's side, a resolved speed ratio, Pareto membership, a trend), never fixed text; so a
closing cannot state what the table above it contradicts, and ``tests/ui/lessons`` feeds each one
opposite data and sees its wording change. The figures a closing needs are listed in its docstring.
"""
from __future__ import annotations

import re
from importlib import import_module
from typing import Mapping

from IPython.display import Markdown

from edgekit.core.errors import InputError


def lesson_module(notebook: str):
    """The lessons module of a notebook, from its file name or stem (``"07_compare_dashboard"``)."""
    stem = re.sub(r"^\d+_", "", notebook.removesuffix(".ipynb").rsplit("/", 1)[-1])
    try:
        return import_module(f"{__name__}.{stem}")
    except ModuleNotFoundError as err:
        if err.name != f"{__name__}.{stem}":
            raise
        raise InputError(f"no closing is written for notebook {notebook!r}: "
                         f"add edgekit/ui/lessons/{stem}.py") from None


def closing(notebook: str, figures: Mapping) -> Markdown:
    """The notebook's closing rendered from this run's ``figures``."""
    return Markdown(lesson_module(notebook).closing(dict(figures)))
