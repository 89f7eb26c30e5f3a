"""Notebook 13's closing: does 4-bit flip answers? Read from the run's paired task figures.

:func:`figures_from` gathers, from a comparison run with tasks (``compare(..., tasks=TaskRun(...))``), one row
per (variant, task): accuracy, the baseline's, Δaccuracy with its paired bootstrap 95% interval, flips both
ways, McNemar's exact p, the variant's KL (± its standard error), the flip rate with its Wilson 95% interval;
and per task how KL ranks the flip rates
(:func:`edgekit.measure.paired.kl_flip_relation`). :func:`closing` writes the Markdown from them:

- a change of accuracy is claimed only from its interval (:func:`edgekit.ui.narrate.reads`: wholly below zero
  "loses", wholly above "gains", holding zero "no resolved change"), both sides read by the same rule;
- more flips one way than the other is claimed only where McNemar's p is below ``ALPHA``; otherwise both counts
  are given and called unresolved;
- KL "ranks" the flip rates only where Spearman's p is below ``ALPHA`` with at least three rows.
"""
from __future__ import annotations

from edgekit.measure.paired import kl_flip_relation, rate_interval
from edgekit.ui.narrate import listing, plural, reads, side, sig

ALPHA = 0.05  # the level below which McNemar's and Spearman's p support a claim


def figures_from(results: list, model: str | None = None) -> dict:
    """The closing's figures from a comparison's results (the baseline first); rows without tasks are left out."""
    base = results[0]
    rows, rates = [], {}
    for r in results[1:]:
        for task, m in (r.metrics.get("tasks") or {}).items() if r.status == "ok" else ():
            if m.get("task_accuracy_delta") is None:
                continue
            flips = m["flips_right_to_wrong"] + m["flips_wrong_to_right"]
            rows.append({"variant": r.variant, "task": task, "items": m["task_items"],
                         "accuracy": m["task_accuracy"], "base_accuracy": base.metrics["tasks"][task]["task_accuracy"],
                         "delta": m["task_accuracy_delta"], "ci": list(m["task_accuracy_delta_ci95"]),
                         "right_to_wrong": m["flips_right_to_wrong"], "wrong_to_right": m["flips_wrong_to_right"],
                         "mcnemar_p": m["mcnemar_p"], "kl": r.metrics.get("kl_divergence"),
                         "kl_se": r.metrics.get("kl_divergence_se"), "flip_rate": flips / m["task_items"],
                         "flip_rate_ci": list(rate_interval(flips, m["task_items"]))})
            rates.setdefault(task, []).append((r.metrics.get("kl_divergence"), flips / m["task_items"]))
    return {"model": model or base.model, "baseline": base.variant, "rows": rows,
            "relation": {task: kl_flip_relation(pairs) for task, pairs in rates.items()}}


def accuracy_reading(row: dict) -> str:
    return reads(row["ci"], "gains accuracy (the interval lies wholly above zero)",
                 "loses accuracy (the interval lies wholly below zero)",
                 "no resolved change of accuracy (the interval holds zero)")


def flip_reading(row: dict) -> str:
    counts = f"{row['right_to_wrong']} right→wrong, {row['wrong_to_right']} wrong→right"
    if row["right_to_wrong"] + row["wrong_to_right"] == 0:
        return "no answer flipped"
    if row["mcnemar_p"] < ALPHA:
        way = "wrong" if row["right_to_wrong"] > row["wrong_to_right"] else "right"
        return f"{counts}: more answers turn {way} than back (McNemar p {sig(row['mcnemar_p'])})"
    return f"{counts}: no resolved imbalance between the two ways (McNemar p {sig(row['mcnemar_p'])})"


def relation_reading(task: str, relation: dict) -> str:
    if relation["spearman"] is None:
        return (f"`{task}`: {plural(relation['rows'], 'paired row')}, too few (or without spread) to say whether KL "
                "ranks the flip rates")
    rho = f"Spearman rho {relation['spearman']:+.2f} over {relation['rows']} rows, p {sig(relation['p'])}"
    if relation["p"] < ALPHA:
        way = "more KL, more flipped answers" if relation["spearman"] > 0 else "more KL, fewer flipped answers"
        return f"`{task}`: KL ranks the flip rates ({way}; {rho})"
    return f"`{task}`: KL does not resolvably rank the flip rates ({rho})"


def closing(figures: dict) -> str:
    """Markdown: per variant and task the accuracy reading and the flips; which rows lose, which hold while
    answers still flip; how KL goes with the flip rate; the interval width this item budget gives."""
    rows = figures["rows"]
    if not rows:
        return "### What you saw\n\nNo variant was paired against the baseline on a task: nothing to read."
    lines = ["### What you saw", ""]
    for row in rows:
        lines.append(f"- **{row['variant']}** on `{row['task']}`: accuracy {sig(row['accuracy'])} against "
                     f"{sig(row['base_accuracy'])}, Δ {row['delta']:+.3f} [{row['ci'][0]:+.3f}, {row['ci'][1]:+.3f}]: "
                     f"{accuracy_reading(row)}; {flip_reading(row)}.")
    losing = [f"{r['variant']} ({r['task']})" for r in rows if side(r["ci"]) < 0]
    gaining = [f"{r['variant']} ({r['task']})" for r in rows if side(r["ci"]) > 0]
    hidden = [r for r in rows if side(r["ci"]) == 0 and r["right_to_wrong"] + r["wrong_to_right"] > 0]
    lines += ["", f"Accuracy resolvably lower than {figures['baseline']}'s: {listing(losing)}; resolvably higher: "
                  f"{listing(gaining)}."]
    if hidden:
        most = max(hidden, key=lambda r: r["right_to_wrong"] + r["wrong_to_right"])
        lines.append(f"Accuracy that holds is not the same answers: where the interval holds zero, "
                     f"{most['variant']} still flipped {most['right_to_wrong'] + most['wrong_to_right']} of "
                     f"{most['items']} `{most['task']}` items (both ways together), which Δaccuracy alone does not "
                     "show.")
    lines += ["", "How KL goes with the flip rate, per task:", ""]
    lines += [f"- {relation_reading(task, rel)}" for task, rel in figures["relation"].items()]
    widths = [r["ci"][1] - r["ci"][0] for r in rows]
    lines += ["", f"With {listing(sorted({str(r['items']) for r in rows}))} items a task, the Δaccuracy intervals "
                  f"are {sig(min(widths))} to {sig(max(widths))} wide: a change smaller than about half that width "
                  "is not resolved by this budget; score more items (`LIMIT = None`: every item) to resolve it."]
    return "\n".join(lines)
