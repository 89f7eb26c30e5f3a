"""ipywidgets for the notebooks: UI only. Every widget calls a library function that a plain
call can use too; an :class:`~edgekit.errors.EdgekitError` is shown in place, not as a traceback."""
from __future__ import annotations

import html
from contextlib import contextmanager

import ipywidgets as w

from edgekit.errors import EdgekitError


def error_html(exc: Exception) -> str:
    return f'<div style="color:#b00020"><b>{type(exc).__name__}:</b> {html.escape(str(exc))}</div>'


@contextmanager
def errors_shown_in(output: w.Output):
    """Run a widget callback; an EdgekitError appears in ``output`` as one red line."""
    try:
        yield
    except EdgekitError as exc:
        with output:
            from IPython.display import HTML, display

            display(HTML(error_html(exc)))


def model_source_picker(value: str = "default") -> w.Combobox:
    """Pick the model: the shipped default, a local folder or a hub id (free text)."""
    return w.Combobox(value=value, options=["default"], placeholder="default, ./path or org/name",
                      description="model", ensure_option=False, layout=w.Layout(width="420px"))
