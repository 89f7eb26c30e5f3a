"""Progress bars that leave no litter in a notebook's stored outputs.

``tqdm.auto`` draws an ipywidget in a notebook, and a saved notebook keeps each bar's
plain-text fallback as it was when the bar was *first displayed*: "0%|" for every loop,
however it ended, and a hidden bar (``leave=False``) is still stored. This ``tqdm`` is
``tqdm.auto``'s, except that in a notebook its display is replaced when it closes: by
nothing for ``leave=False`` bars, by the finished bar for the others. A terminal gets the
plain tqdm unchanged. Import it instead of ``tqdm.auto``: ``from edgekit.core.progress import tqdm``.

A hidden bar still leaves an empty output behind in a stored notebook, so a notebook that stores its outputs sets
``TQDM_DISABLE=1`` before importing edgekit: here that silences every bar, even one a caller asked for with
``disable=False`` (tqdm itself lets an explicit argument win over the environment).
"""
from __future__ import annotations

import os

from tqdm.auto import tqdm as _auto_tqdm


def silenced() -> bool:
    """Whether ``TQDM_DISABLE`` asks for no progress bars at all (a stored notebook run sets it)."""
    return os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes")

try:
    from tqdm.notebook import tqdm_notebook as _notebook_tqdm
except ImportError:  # no ipywidgets: tqdm.auto is the terminal bar
    _notebook_tqdm = None

if _notebook_tqdm is not None and issubclass(_auto_tqdm, _notebook_tqdm):
    from IPython.display import display

    class tqdm(_auto_tqdm):  # noqa: N801 - tqdm's own name
        """tqdm.auto's notebook bar, displayed under a display id so that closing it rewrites its stored output."""

        def __init__(self, *args, **kwargs):
            if silenced():
                kwargs["disable"] = True  # no bar at all: a hidden one would leave an empty stored output
            show = kwargs.pop("display", True) and kwargs.get("delay", 0) <= 0
            super().__init__(*args, display=False, **kwargs)
            self._handle = None
            if show and not self.disable:
                self._handle = display(self.container, display_id=True)
                self.displayed = True

        def close(self):
            if self.disable:
                return
            failed = bool(self.total and self.n < self.total)
            super().close()
            if self._handle is not None:
                if self.leave or failed:
                    self._handle.update(self.container)  # the text fallback now shows the end state
                else:
                    self._handle.update({"text/plain": ""}, raw=True)
                self._handle = None
else:
    tqdm = _auto_tqdm

__all__ = ["tqdm"]
