"""Closing of notebook 06 (deployment artifact): verification and the canary's actual verdict and its grounds.

Figures (``closing(figures)``):

- ``source``: the source model the manifest names; ``exit_code``: what ``edgekit verify`` returned on the intact
  folder; ``refusals``: ``{damage: reason or "accepted (!)"}`` for the damaged copies;
- ``checks``: the canary's checks (``CanaryReport.frame()`` rows: ``check``, ``value``, ``bound``, ``limit``,
  ``unit``, ``passed``); ``verdict``: ``CanaryReport.verdict``;
- ``samples``: ``{"current": n, "candidate": n}`` decode steps each artifact was timed on; ``p99_min``: the steps
  a P99 needs (default ``edgekit.measure.speed.P99_MIN_SAMPLES``, the canary's own rule); ``contended``: whether
  the timing ran contended.
"""
from __future__ import annotations

from edgekit.measure.speed import P99_MIN_SAMPLES
from edgekit.ui.narrate import listing, plural, sig

QUALITY = ("perplexity delta", "KL divergence", "top-1 agreement")


def judged(check: dict) -> str:
    """``bound +1.23 against a limit of 1: passed``."""
    outcome = ("passed" if check["passed"]
               else "**failed** (contended timing)" if "contended" in check.get("unit", "") else "**failed**")
    return f"{check['check']} judged on {sig(check['bound'])} against a limit of {sig(check['limit'])}: {outcome}"


def verification_sentence(f: dict) -> str:
    accepted = [name for name, reason in f["refusals"].items() if reason.startswith("accepted")]
    intact = "passed" if f["exit_code"] == 0 else f"**failed** (exit code {f['exit_code']})"
    damaged = (f"refused all {plural(len(f['refusals']), 'damaged copy', 'damaged copies')}, each with one line "
               "that says what is wrong" if not accepted
               else f"**accepted** {listing(accepted)}: verification missed {plural(len(accepted), 'damage')}")
    return f"Verification {intact} on the intact folder and {damaged}."


def tail_sentence(f: dict, by: dict) -> str:
    current, candidate = f["samples"]["current"], f["samples"]["candidate"]
    p99_min = f.get("p99_min", P99_MIN_SAMPLES)
    if "P99 latency increase" in by:
        return (f"Both artifacts were timed on at least {p99_min} decode steps ({current} and {candidate}), so the "
                f"tail is gated on P99: {judged(by['P99 latency increase'])}.")
    tail = by["median latency increase"]
    return (f"The artifacts were timed on {current} and {candidate} decode steps, fewer than the {p99_min} a P99 "
            f"needs, so P99 is withheld and the tail check is the median step time's increase with its interval: "
            f"{judged(tail)} (upper 95% bound, in %).")


def speed_sentence(f: dict, by: dict) -> str:
    slow = by["decode slowdown"]
    if f["contended"]:
        return ("The timing ran while other processes held the cores (contended), so both speed checks fail whatever "
                f"their values ({judged(slow)}): measure again on a quiet machine before promoting on speed.")
    return f"The timing ran uncontended: {judged(slow)} (upper 95% bound, in %)."


def closing(figures: dict) -> str:
    f = figures
    by = {c["check"]: c for c in f["checks"]}
    failed = [c["check"] for c in f["checks"] if not c["passed"]]
    verdict = ("**promote**: every check passed on its pessimistic bound" if not failed
               else f"**hold back**, on {listing(failed)}")
    return "\n".join([
        "- The artifact is a handful of files and a manifest that names every one of them with its size and sha256, "
        f"beside the recipe, the versions that built it and the parity measured at export; the source model is named "
        f"as given (`{f['source']}`), not by a path of the machine that built it.",
        "- " + verification_sentence(f),
        "- Quality, on the pessimistic end of each 95% interval: "
        + "; ".join(judged(by[name]) for name in QUALITY if name in by) + ".",
        "- " + tail_sentence(f, by) + " " + speed_sentence(f, by),
        f"- The canary's verdict: {verdict}. Moving the sliders re-judges the same measurements: "
        "the thresholds are a policy decision, separate from the measurement.",
    ])
