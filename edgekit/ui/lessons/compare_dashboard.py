"""Closing of notebook 07 (compare dashboard): each variant's Δppl interval read on both sides, the Pareto fronts
on KL and on the |Δppl| bound, speed only from the protocol's resolved ratios, the side by side and the sweep.

Figures (``closing(figures)``):

- ``base``, ``ppl``, ``windows``, ``base_mb``: the baseline, its perplexity, the scored windows and its weight MB;
- ``rows``: ``{variant: {"delta_ci95": [lo, hi], "kl", "kl_se", "mb", "speed_ratio_ci95" (or None),
  "speed_coverage" (the ratio interval's coverage, or None), "contended"}}`` for every other variant measured;
- ``samples``: decode-step gaps timed per variant; ``withheld``: the latency percentiles withheld for too few;
- ``gen_variant``, ``same``, ``gen_n``, ``parting``: the side by side (``parting`` None, or the two first
  differing tokens);
- ``n_ray``, ``n_store``: sweep cells measured on Ray and taken from the store; ``sweep``: ``{model: {"ppl",
  "rows": {variant: {"delta_ci95", "kl"}}}}``.
"""
from __future__ import annotations

from edgekit.measure.stats import delta_reading
from edgekit.ui.narrate import listing, loss_bound, on_front, plural, ranking, reads, sig, speed_reading

LEVEL = 0.95


def interval(ci) -> str:
    return f"[{ci[0]:+.2f}, {ci[1]:+.2f}]"


def delta_sentence(rows: dict) -> str:
    groups: dict[str, list[str]] = {}
    for name, row in rows.items():
        groups.setdefault(delta_reading(*row["delta_ci95"]), []).append(f"`{name}` {interval(row['delta_ci95'])}%")
    said = {"worse": "worse than the baseline beyond its interval",
            "better": "below the baseline beyond its interval (on this text: rounding does not teach a model, so "
                      "read it as this slice of text, and check another split before believing it)",
            "within noise": "within noise: the interval holds zero, so no change is resolved",
            "no interval": "without an interval (a single window)"}
    return "**Reading the Δppl column**, each interval on both sides: " + "; ".join(
        f"{listing(groups[k])} {said[k]}" for k in said if k in groups) + "."


def front_sentence(rows: dict, base: str, base_mb: float) -> str:
    points_kl = {base: (base_mb, 0.0), **{n: (r["mb"], r["kl"]) for n, r in rows.items()}}
    points_bound = {base: (base_mb, 0.0), **{n: (r["mb"], loss_bound(r["delta_ci95"])) for n, r in rows.items()}}
    on_kl, on_bound = on_front(points_kl), on_front(points_bound)
    off = [n for n in rows if n not in on_kl]
    return (f"**Pareto front** on KL against weight bytes: {listing(f'`{n}`' for n in on_kl)}"
            + (f" ({listing(f'`{n}`' for n in off)} off it: another variant is no larger and closer to fp32)"
               if off else "")
            + f"; on the largest |Δppl| each interval allows: {listing(f'`{n}`' for n in on_bound)}. "
            "A negative Δppl within noise earns no place on either.")


def closest_sentence(rows: dict) -> str:
    order = ranking({n: r["kl"] for n, r in rows.items()})
    first = rows[order[0]]
    if len(order) == 1:
        return f"`{order[0]}` has KL {sig(first['kl'])} ± {sig(first['kl_se'], 2)}."
    second = rows[order[1]]
    se = (first["kl_se"] ** 2 + second["kl_se"] ** 2) ** 0.5
    diff = second["kl"] - first["kl"]
    resolved = reads((diff - 1.96 * se, diff + 1.96 * se), above="resolved from", below="resolved from",
                     within="not resolved from")
    return (f"The lowest KL is `{order[0]}`'s ({sig(first['kl'])} ± {sig(first['kl_se'], 2)}), {resolved} the next, "
            f"`{order[1]}` ({sig(second['kl'])} ± {sig(second['kl_se'], 2)}).")


def speed_word(row: dict) -> str:
    """What a row's speed ratio against the baseline allows: resolved faster/slower, no resolved difference,
    contended, too few repetitions for a 95% interval, or no interval at all."""
    coverage = row.get("speed_coverage")
    if not row.get("speed_ratio_ci95") and not row.get("contended"):
        return "no interval (too few timed runs)"
    if row.get("speed_ratio_ci95") and coverage is not None and coverage < LEVEL and not row.get("contended"):
        return f"not resolved: too few repetitions for a 95% interval (its interval covers {coverage:.0%})"
    return speed_reading(row.get("speed_ratio_ci95"), bool(row.get("contended")))


def speed_sentence(f: dict) -> str:
    if not f.get("samples"):
        return "**Speed** was not timed in this run: no speed claim."
    words = {n: speed_word(r) for n, r in f["rows"].items()}
    withheld = listing([p.upper() for p in f["withheld"]], empty="none")
    return ("**Speed** against the baseline, from the speed protocol's paired ratio per variant: "
            + "; ".join(f"`{n}` {w}" for n, w in words.items())
            + f". Percentiles withheld for too few decode steps ({f['samples']} per variant): {withheld}.")


def side_by_side_sentence(f: dict) -> str:
    parting = (" — all of them" if f["parting"] is None
               else f"; token {f['same'] + 1} is where they part ({f['parting'][0]!r} vs {f['parting'][1]!r}), and "
                    "every later difference follows from that one")
    return (f"**Side by side**, fp32 and `{f['gen_variant']}` share the first {f['same']} of {f['gen_n']} "
            f"tokens{parting}.")


def sweep_sentence(f: dict) -> str:
    if not f["sweep"]:
        return ("**The sweep** returned no cells in this run: the dashboard's messages above say why (a local Ray "
                "cluster that cannot start on a loaded machine is the usual reason), so it backs no claim.")
    cells = sum(len(m["rows"]) + 1 for m in f["sweep"].values())
    per_model = []
    for model, m in f["sweep"].items():
        rows = "; ".join(f"`{v}` Δppl {interval(r['delta_ci95'])}% ({delta_reading(*r['delta_ci95'])}), KL "
                         f"{sig(r['kl'])}" for v, r in m["rows"].items())
        per_model.append(f"on `{model}` (perplexity {sig(m['ppl'])}): {rows or 'no variant measured'}")
    return (f"**The sweep** covered {plural(len(f['sweep']), 'model')} in {plural(cells, 'cell')}, "
            f"{f['n_ray']} measured as Ray tasks and {f['n_store']} taken from the store; each against its own fp32 "
            "(perplexities are per token of each model's own tokenizer, so not comparable across models): "
            + "; ".join(per_model) + ".")


def closing(figures: dict) -> str:
    f, rows = figures, figures["rows"]
    smallest = ranking({n: r["mb"] for n, r in rows.items()})[0]
    return "\n".join([
        f"- The table lists {plural(len(rows), 'variant')} against `{f['base']}` (perplexity {sig(f['ppl'])} on "
        f"{f['windows']} windows; Student-t intervals with {f['windows'] - 1} degrees of freedom).",
        "- " + delta_sentence(rows),
        "- " + front_sentence(rows, f["base"], f["base_mb"]) + " " + closest_sentence(rows),
        f"- `{smallest}` is the smallest at {rows[smallest]['mb']:.2f} MB of weights against {f['base_mb']:.2f} MB.",
        "- " + speed_sentence(f),
        "- " + side_by_side_sentence(f),
        "- " + sweep_sentence(f),
    ])
