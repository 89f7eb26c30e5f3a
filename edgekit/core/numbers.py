"""Numbers for reading: what a table, a closing or the command line shows is the figure, not the float.

3 significant figures for measurements (``0.146``, ``49.6``, ``1,230``), sizes at 2 decimals; the full
precision stays in the stored results and ``--json``.
"""
from __future__ import annotations

import math


def sig(value: float, digits: int = 3) -> str:
    """``value`` to ``digits`` significant figures, without exponent for everyday magnitudes (0.00123, 49.6,
    1230)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if value == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(value)))
    if magnitude >= digits - 1:
        return f"{round(value, digits - 1 - magnitude):,.0f}"
    if magnitude < -4:
        return f"{value:.{digits - 1}e}"
    return f"{value:.{digits - 1 - magnitude}f}"


def mb(num_bytes: float) -> str:
    """Bytes as megabytes with 2 decimals: ``10.91 MB``."""
    return f"{num_bytes / 1e6:.2f} MB"


def gib(num_bytes: float) -> str:
    """Bytes as GiB with 2 decimals: ``5.36 GiB``."""
    return f"{num_bytes / 2**30:.2f} GiB"
