"""Notebook 03's closing: the variants of one model side by side (Δppl read from its interval, KL and top-1,
bytes, speed from the speed protocol) and the same comparison on a real pretrained model.

Figures: ``base`` (the baseline variant), ``ppl``, ``tokens``, ``windows``, ``max_tokens`` (None: whole split);
``rows`` ({variant: metrics} of the default model's run, baseline included: ``delta_ppl_pct_ci95``,
``kl_divergence``, ``kl_divergence_se``, ``weight_bytes`` and, where the speed protocol ran, ``speed_ratio_ci95``,
``contended``, ``compute_path``, ``bound``); ``real_model``, ``real_tokens`` and ``real`` ({variant: metrics} of the
real model's run, with ``grid_aligned`` where the variant reproduces the baseline's grid).
"""
from __future__ import annotations

import math

from edgekit.measure.stats import delta_reading
from edgekit.ui.narrate import choose, listing, sig, speed_reading

SEPARATED_SE = 2.0  # KL values this many standard errors apart (independent errors) count as separated


def _reading(metrics: dict) -> str:
    ci = metrics.get("delta_ppl_pct_ci95")
    return delta_reading(*ci) if ci else "no interval"


def _names(variants) -> str:
    return listing([f"`{v}`" for v in variants])


def _kl_pair(rows: dict, a: str, b: str) -> str:
    if a not in rows or b not in rows:
        return f"(pick `{a}` and `{b}` to compare them)"
    ka, kb = rows[a]["kl_divergence"], rows[b]["kl_divergence"]
    gap = abs(ka - kb) / max(math.hypot(rows[a]["kl_divergence_se"], rows[b]["kl_divergence_se"]), 1e-300)
    lower = a if ka < kb else b
    verdict = choose(gap >= SEPARATED_SE, f"`{lower}` drifts less, {gap:.1f} standard errors apart",
                     f"not separated ({gap:.1f} standard errors apart, under {SEPARATED_SE:g})")
    return (f"`{a}` KL {sig(ka)} ± {sig(rows[a]['kl_divergence_se'])} against `{b}` {sig(kb)} ± "
            f"{sig(rows[b]['kl_divergence_se'])}: {verdict}")


def _speed(rows: dict, base: str) -> str:
    timed = {v: m for v, m in rows.items() if v != base and m.get("speed_ratio_ci95")}
    if not timed:
        return "- Speed was not measured in this run (`LATENCY_RUNS = 0`): it claims nothing about speed."
    groups: dict[str, list[str]] = {}
    for v, m in timed.items():
        groups.setdefault(speed_reading(m["speed_ratio_ci95"], bool(m.get("contended"))), []).append(v)
    said = "; ".join(f"{reading}: {_names(vs)}" for reading, vs in groups.items())
    paths = "; ".join(f"`{v}` {m.get('compute_path') or 'n/a'} ({m.get('bound') or 'no roofline verdict'})"
                      for v, m in timed.items())
    return (f"- Decode speed against `{base}`, read from the speed protocol's paired ratio interval: {said}. How each "
            f"multiplies (`compute_path`) and its roofline verdict (`bound`): {paths}.")


def closing(figures: dict) -> str:
    f = figures
    rows, base, real = f["rows"], f["base"], f["real"]
    others = [v for v in rows if v != base]
    readings: dict[str, list[str]] = {}
    for v in others:
        readings.setdefault(_reading(rows[v]), []).append(v)
    four_bit = [v for v in others if v.startswith(("nf4", "fp4", "int4"))]
    shares = [rows[v]["weight_bytes"] / rows[base]["weight_bytes"] for v in four_bit]
    what = choose(f["max_tokens"] is None, "the whole eval split", f"the first {f['max_tokens']:,} tokens")
    lines = [
        f"- Every variant scored the same {f['tokens']:,} tokens ({what}) in {f['windows']} windows; `{base}` is the "
        f"reference (perplexity {sig(f['ppl'])}).",
        f"- What the Δppl intervals allow one to say (paired over windows, `Δppl reading`): worse than `{base}`: "
        f"{_names(readings.get('worse', []))}; within noise: {_names(readings.get('within noise', []))}; better: "
        f"{_names(readings.get('better', []))}. Both sides are read alike: a resolved difference either way is real "
        "on this text; whether it holds on another text is a question for another split.",
        f"- KL separates what perplexity cannot. Group size: {_kl_pair(rows, 'int4-g32', 'int4-g128')}. "
        f"Code book: {_kl_pair(rows, 'nf4', 'fp4')}.",
    ]
    if shares:
        lines.append(f"- Weights: the 4-bit variants hold {min(shares):.0%} to {max(shares):.0%} of `{base}`'s bytes.")
    lines.append(_speed(rows, base))
    real_base = next(iter(real))
    real_lines = []
    for v in [v for v in real if v != real_base]:
        m = real[v]
        aligned = choose(bool(m.get("grid_aligned")),
                         " — on the baseline's grid: it re-rounds onto the grid the Q4_1 weights already lie on, so "
                         "its figures understate what this scheme costs a model that was not 4-bit to begin with", "")
        ci = m.get("delta_ppl_pct_ci95") or [math.nan, math.nan]
        real_lines.append(f"`{v}` Δppl {m['delta_ppl_pct']:+.1f}% [{ci[0]:+.1f}, {ci[1]:+.1f}] "
                          f"({_reading(m)}), KL {sig(m['kl_divergence'])}{aligned}")
    lines.append(
        f"- **A real model.** `{f['real_model']}` ({f['real_tokens']} tokens here, so wide intervals) was published "
        "as a Q4_1 GGUF: its block linears already lie on a 4-bit asymmetric grid of blocks of 32, and its "
        f"`{real_base}` baseline is that grid dequantized. Against it: {'; '.join(real_lines)}. These schemes are "
        "weight-only: what a variant loses is the rounding error of each group of weights (notebook 01), carried "
        "through the layers to the output; activations stay in floating point.")
    return "\n".join(lines) + "\n"
