"""Notebook 12 · A 7B on a 24 GB, 2-core machine: every path, streamed.

``figures``:

- ``record_model``: what the recorded 7B run measured (the record's ``model`` line; a random checkpoint says
  "random");
- ``device``, ``budget_gib``: the machine class and its usable memory; ``fits``: the paths the plan admits at
  their peak; ``old``: ``{variant: planned peak GiB}`` of the ``low_memory=false`` loads;
- ``peaks``: ``{variant: {"planned_gb", "measured_gb"}}`` from the record;
- ``missing``: paths not in the record;
- ``load_s``, ``score_s``: ``{variant: seconds}`` recorded for export + load and for scoring;
- ``ran``, ``paths``, ``source``: the end-to-end run here; ``readings``: ``{variant: Δppl reading}`` of it
  ("better", "within noise", "worse"; the baseline left out).
"""
from __future__ import annotations

from edgekit.ui.narrate import listing, plural, sig


def closing(figures: dict) -> str:
    peaks = figures["peaks"]
    highest = max(peaks, key=lambda v: peaks[v]["measured_gb"])
    ratios = {v: p["measured_gb"] / p["planned_gb"] for v, p in peaks.items()}
    worst = max(ratios, key=ratios.get)
    budget_gb = figures["budget_gib"] * 2**30 / 1e9
    under = "under" if peaks[highest]["measured_gb"] <= budget_gb else "over"
    held = ("every measured peak stayed at or under its planned one" if ratios[worst] <= 1 else
            f"the measured peak was at most {sig(ratios[worst])}x the planned one (`{worst}`)")
    random = "random" in figures["record_model"]
    weights = (f"**The recorded 7B has random weights** ({figures['record_model']}): no real 7B is reachable offline. "
               f"Its memory and time are what a real 7B of that shape costs; its quality figures say nothing about a "
               f"real 7B's quality, so none are shown." if random else
               f"The recorded 7B is {figures['record_model']}.")
    load, score = figures["load_s"], figures["score_s"]
    slow = max(load, key=load.get)
    readings = figures["readings"]
    counts = ", ".join(f"{plural(sum(r == word for r in readings.values()), 'path')} {word}"
                       for word in ("worse", "within noise", "better") if word in readings.values())
    old = "; ".join(f"`{v.split(':')[0]}` {sig(g)} GiB" for v, g in figures["old"].items())
    refused = [v for v, g in figures["old"].items() if g > figures["budget_gib"]]
    return f"""
- {weights}
- On `{figures["device"]}` ({sig(figures["budget_gib"])} GiB usable) the plan admits these paths of the 7B at their
  peak: {listing(f"`{v}`" for v in figures["fits"])}. Loading the fp32 model first would need {old}, so the guard
  refuses {listing(f"`{v.split(':')[0]}`" for v in refused) if refused else "none of them"} that way before reading a
  weight.
- In the recorded run the highest peak was {sig(peaks[highest]["measured_gb"])} GB (`{highest}`), {under} the
  {sig(budget_gb)} GB the machine class allows; {held}.
  {"Not in the record: " + listing(figures["missing"]) + "." if figures["missing"] else ""}
- Recorded once on 2 cores with other jobs sharing them (upper bounds, not a ranking): the longest export + load took
  {sig(load[slow])} s (`{slow}`), paid once per artifact; scoring 256 tokens took {sig(min(score.values()))} to
  {sig(max(score.values()))} s a variant.
- End to end here, {figures["ran"]} of {figures["paths"]} paths ran on `{figures["source"]}` against the bf16
  baseline kept on disk; their perplexity changes read: {counts or "no interval"} (each interval read alike on both
  sides of zero).
"""
