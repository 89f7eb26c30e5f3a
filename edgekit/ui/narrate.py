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

The predicates below are the only grounds a closing may compare on, each decided by the run's figures:

- :func:`side` / :func:`reads`: an interval wholly above, wholly below, or holding a value (zero for a
  difference, one for a ratio), both sides read alike, and no interval read as no claim;
- :func:`speed_reading`: a speed ratio resolved by the speed protocol's paired interval, and nothing
  claimed from a contended row;
- :func:`on_front`: Pareto membership on a size and a loss that never rewards noise (KL, or the bound of
  ``|Δ|`` from :func:`loss_bound`);
- :func:`trend` and :func:`ranking`: a monotone trend and an order, ties (within tolerance) kept as ties.

:func:`sig`, :func:`mb` and :func:`gib` (from :mod:`edgekit.core.numbers`) format numbers for reading.
"""
from __future__ import annotations

import math
from string import Formatter
from typing import Iterable, Mapping, Sequence

import numpy as np
from IPython.display import Markdown  # IPython comes with Jupyter; the library does not need it otherwise

from edgekit.core.errors import InputError
from edgekit.core.numbers import gib, mb, sig  # noqa: F401  (a closing's formats, one home in core)
from edgekit.measure.stats import interval_side


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


# ---------------------------------------------------------------- predicates a closing may compare on
def pareto_front(sizes, losses) -> np.ndarray:
    """Boolean mask of the points no other point beats: smaller-or-equal size and
    smaller-or-equal loss, strictly better in one."""
    sizes, losses = np.asarray(sizes, float), np.asarray(losses, float)
    on_front = np.ones(len(sizes), bool)
    for i in range(len(sizes)):
        beaten = (sizes <= sizes[i]) & (losses <= losses[i]) & ((sizes < sizes[i]) | (losses < losses[i]))
        on_front[i] = not beaten.any()
    return on_front


def side(interval: Sequence[float] | None, value: float = 0.0) -> int:
    """+1 when ``interval`` ([low, high]) lies wholly above ``value``, -1 wholly below, 0 when it holds it or
    there is no interval (None, NaN): the sign a comparative sentence may rest on."""
    if interval is None or len(interval) != 2:
        return 0
    return interval_side(float(interval[0]), float(interval[1]), value)


def apart(a: Sequence[float] | None, b: Sequence[float] | None) -> int:
    """+1 when interval ``a`` lies wholly above interval ``b``, -1 wholly below, 0 when they overlap or either is
    missing: two measured intervals compared by the rule ``tuning.winner`` uses."""
    if not a or not b:
        return 0
    return 1 if a[0] > b[1] else -1 if a[1] < b[0] else 0


def reads(interval: Sequence[float] | None, above: str, below: str, within: str, value: float = 0.0) -> str:
    """The phrase ``interval`` supports against ``value``: ``above``, ``below`` or ``within`` (holding it, or no
    interval). Both sides are read by the same rule."""
    return {1: above, -1: below, 0: within}[side(interval, value)]


def speed_reading(ratio_interval: Sequence[float] | None, contended: bool = False) -> str:
    """A speed ratio (variant / baseline, paired by round) read from its interval: "faster", "slower", "no
    resolved difference" when the interval holds 1, "not comparable: contended" when the row's repetitions ran
    while other work took its cores (the speed protocol keeps such rows out of claims)."""
    if contended:
        return "not comparable: contended"
    return reads(ratio_interval, "faster", "slower", "no resolved difference", value=1.0)


def loss_bound(interval: Sequence[float]) -> float:
    """The largest ``|Δ|`` an interval allows: a loss for a Pareto front that never rewards a negative Δ within
    noise (an interval [-1.6, +1.1] weighs 1.6, not -0.3)."""
    return max(abs(float(interval[0])), abs(float(interval[1])))


def on_front(points: Mapping[str, tuple[float, float]]) -> list[str]:
    """Names on the Pareto front of ``{name: (size, loss)}``, smaller both being better (in the given order)."""
    names = list(points)
    mask = pareto_front([points[n][0] for n in names], [points[n][1] for n in names])
    return [n for n, keep in zip(names, mask) if keep]


def trend(values: Sequence[float], tolerance: float = 0.0) -> str:
    """"rises", "falls" or "not monotone" for a sequence in its given order; steps no larger than ``tolerance``
    count as flat, and a sequence that is all flat "holds level"."""
    steps = [b - a for a, b in zip(values, values[1:])]
    up = [d > tolerance for d in steps]
    down = [d < -tolerance for d in steps]
    if not any(up) and not any(down):
        return "holds level"
    if not any(down):
        return "rises"
    if not any(up):
        return "falls"
    return "not monotone"


def ranking(values: Mapping[str, float], descending: bool = False) -> list[str]:
    """Names ordered by value (ascending unless ``descending``); NaN last."""
    def key(name):
        v = values[name]
        return (math.isnan(v), -v if descending else v)
    return sorted(values, key=key)


def listing(names: Iterable[str], empty: str = "none") -> str:
    """``a``, ``a and b``, ``a, b and c``; ``empty`` for none."""
    names = [str(n) for n in names]
    if not names:
        return empty
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def plural(count: int, one: str, many: str | None = None) -> str:
    """``1 variant``, ``3 variants``."""
    return f"{count} {one if count == 1 else (many or one + 's')}"
