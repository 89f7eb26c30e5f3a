"""Tables formatted for reading: what a notebook or report shows is the figure, not the float.

:func:`readable` styles a frame so every number reads at 3 significant figures (``0.146``, ``49.6``,
``1,230``), sizes in MB or GiB (a column named so) at 2 decimals, intervals as ``[lo, hi]`` and missing
values as a dash; the frame itself keeps its full-precision values for anyone who computes on it.
"""
from __future__ import annotations

import numbers

import pandas as pd
from pandas.io.formats.style import Styler

from edgekit.ui.narrate import sig

SIZE_MARKERS = ("MB", "GiB", "GB", "_mb", "_gib", "_gb")


def format_value(value, size: bool = False) -> str:
    """One cell: a size at 2 decimals, another number at 3 significant figures, a pair as an interval."""
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    if isinstance(value, bool) or isinstance(value, str):
        return str(value)
    if isinstance(value, numbers.Integral):
        return f"{value:,}"
    if isinstance(value, numbers.Real):
        return f"{value:,.2f}" if size else sig(float(value))
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, numbers.Real) for v in value):
        return f"[{format_value(value[0], size)}, {format_value(value[1], size)}]"
    return str(value)


def readable(frame: pd.DataFrame, hide_index: bool = True) -> Styler:
    """``frame`` styled for reading (see the module docstring); ``hide_index`` drops a default 0..n index."""
    formatters = {column: (lambda v, size=any(m in str(column) for m in SIZE_MARKERS): format_value(v, size))
                  for column in frame.columns}
    styler = frame.style.format(formatters)
    return styler.hide(axis="index") if hide_index else styler
