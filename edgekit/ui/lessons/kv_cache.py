"""Notebook 11 · KV-cache quantization: the other half of long-context memory.

``figures``:

- ``transformers_backend``: whether optimum-quanto or hqq is installed;
- ``plan``: ``{"model", "variant", "mid": context, "weights_gib", "kv_gib": {cache: GiB at mid}, "fit_context",
  "fit_device", "fits": {cache: bool}, "total_gib": {cache: GiB}, "budget_gib"}``;
- ``worst_mib``: the largest gap between llama.cpp's reported cache and the planner's, MiB;
- ``prompt``: tokens of the prompt before the timed decode;
- ``rows``: ``{cache: {"kl", "kl_ci": [lo, hi], "top1", "ratio_ci": [lo, hi] decode rate over the f16 cache's,
  paired by round, "contended"}}`` in order of decreasing bits (the first and last are compared).
"""
from __future__ import annotations

from edgekit.ui.narrate import apart, listing, sig, speed_reading


def _fits(fits: bool) -> str:
    return "fits" if fits else "does not fit"


def closing(figures: dict) -> str:
    plan, rows = figures["plan"], figures["rows"]
    caches = list(rows)
    first, last = caches[0], caches[-1]
    kl_compare = {1: f"Fewer bits cost more here: `{last}`'s KL interval lies wholly above `{first}`'s.",
                  0: f"The two KL intervals overlap: on this text `{first}`'s extra bits are not measurably better.",
                  -1: f"`{last}`'s KL interval lies wholly below `{first}`'s: on this text the extra bits did not "
                      f"help."}[apart(rows[last]["kl_ci"], rows[first]["kl_ci"])]
    readings = {c: speed_reading(r["ratio_ci"], r["contended"]) for c, r in rows.items()}
    speeds = "; ".join(f"`{c}` {readings[c]}" + (f" (ratio [{sig(r['ratio_ci'][0])}, {sig(r['ratio_ci'][1])}])"
                                                  if r["ratio_ci"] else "") for c, r in rows.items())
    slower = [f"`{c}`" for c, w in readings.items() if w == "slower"]
    faster = [f"`{c}`" for c, w in readings.items() if w == "faster"]
    why = ""
    if slower:
        why += (f" {listing(slower)} decoded slower: a quantized cache is not free on a CPU, each read dequantizes "
                f"its blocks, and on a model this small that costs more than the bytes it saves — the memory, not "
                f"the speed, is the gain.")
    if faster:
        why += f" {listing(faster)} decoded faster: a quantized cache is fewer bytes to read per token."
    kv = plan["kv_gib"]
    return f"""
- transformers' quantized cache {"has a backend installed" if figures["transformers_backend"] else
                                 "has no backend installed (neither optimum-quanto nor hqq)"}; llama.cpp's cache
  types run here, so the lesson uses them.
- For `{plan["model"]}` at {plan["mid"]:,} tokens the planner puts the f16 cache at {sig(kv["f16"])} GiB against
  {sig(plan["weights_gib"])} GiB of `{plan["variant"]}` weights; `{first}` holds it in {sig(kv[first])} GiB and
  `{last}` in {sig(kv[last])} GiB. At {plan["fit_context"]:,} tokens on `{plan["fit_device"]}` the whole plan
  {_fits(plan["fits"]["f16"])} with an f16 cache ({sig(plan["total_gib"]["f16"])} GiB) and {_fits(plan["fits"][last])}
  with `{last}` ({sig(plan["total_gib"][last])} GiB of {sig(plan["budget_gib"])} usable).
- llama.cpp's own report of the cache it allocated matches the planner to {sig(figures["worst_mib"])} MiB (its
  two-decimal rounding) for every type.
- Against the f16 cache on the same windows: `{first}` KL {sig(rows[first]["kl"])} (upper bound
  {sig(rows[first]["kl_ci"][1])}), top-1 {sig(rows[first]["top1"])}; `{last}` KL {sig(rows[last]["kl"])} (upper bound
  {sig(rows[last]["kl_ci"][1])}), top-1 {sig(rows[last]["top1"])}. {kl_compare}
- Decoding after a {figures["prompt"]}-token prompt, against the f16 cache paired by round: {speeds}.{why}
"""
