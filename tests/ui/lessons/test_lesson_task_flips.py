"""Notebook 13's closing chooses its words from the figures: a variant that clearly loses accuracy and flips
answers one way reads differently from one whose interval spans zero and whose flips balance."""
from edgekit.measure.paired import TaskAnswers, kl_flip_relation, mcnemar_exact_p, paired_accuracy
from edgekit.measure.store import Result
from edgekit.ui.lessons.task_flips import closing, figures_from


def row(variant, ci, right_to_wrong, wrong_to_right, kl, items=200):
    delta = (wrong_to_right - right_to_wrong) / items
    return {"variant": variant, "task": "edgekit_lastword", "items": items, "accuracy": 0.5 + delta,
            "base_accuracy": 0.5, "delta": delta, "ci": ci, "right_to_wrong": right_to_wrong,
            "wrong_to_right": wrong_to_right, "mcnemar_p": mcnemar_exact_p(right_to_wrong, wrong_to_right), "kl": kl,
            "flip_rate": (right_to_wrong + wrong_to_right) / items}


def figures(rows):
    return {"model": "m", "baseline": "fp32", "rows": rows,
            "relation": {"edgekit_lastword": kl_flip_relation([(r["kl"], r["flip_rate"]) for r in rows])}}


LOSES = row("int2-g64", [-0.2, -0.11], 34, 3, 0.9)
HOLDS = row("int8", [-0.03, 0.02], 6, 5, 0.002)


def bullet(text, variant):
    return next(line for line in text.splitlines() if line.startswith(f"- **{variant}**"))


def test_a_clear_loss_and_an_interval_across_zero_read_differently():
    text = closing(figures([LOSES, HOLDS]))
    lost, held = bullet(text, "int2-g64"), bullet(text, "int8")
    assert "loses accuracy" in lost and "more answers turn wrong than back" in lost
    assert "no resolved change of accuracy" in held and "no resolved imbalance" in held
    assert "loses" not in held and "more answers turn" not in held
    assert "resolvably lower than fp32's: int2-g64 (edgekit_lastword); resolvably higher: none" in text
    assert "int8 still flipped 11 of 200" in text  # accuracy held, answers did not
    assert "too few" in text  # two rows cannot rank flips by KL


def test_the_wording_follows_the_data_not_the_names():
    swapped = closing(figures([{**LOSES, **{k: HOLDS[k] for k in ("ci", "right_to_wrong", "wrong_to_right",
                                                                  "mcnemar_p", "delta", "accuracy")}},
                               {**HOLDS, **{k: LOSES[k] for k in ("ci", "right_to_wrong", "wrong_to_right",
                                                                  "mcnemar_p", "delta", "accuracy")}}]))
    assert "no resolved change" in bullet(swapped, "int2-g64") and "loses accuracy" in bullet(swapped, "int8")
    gains = closing(figures([row("int4-g32", [0.01, 0.08], 2, 17, 0.05)]))
    assert "gains accuracy" in gains and "more answers turn right than back" in gains
    assert "resolvably higher: int4-g32 (edgekit_lastword)" in gains


def test_kl_ranks_flips_only_when_spearman_resolves_it():
    ranked = [row(f"v{i}", [-0.01 * i - 0.01, 0.01], i * 3, 1, 0.01 * i) for i in range(1, 7)]
    assert "KL ranks the flip rates (more KL, more flipped answers" in closing(figures(ranked))
    pairs = [(5, .1), (1, .2), (6, .3), (2, .4)]
    shuffled = [row(f"v{i}", [-0.05, 0.05], n, n, kl) for i, (n, kl) in enumerate(pairs)]
    assert "KL does not resolvably rank the flip rates" in closing(figures(shuffled))


def test_figures_come_from_a_comparisons_rows():
    base, worse = (TaskAnswers("edgekit_nextline", tuple(range(8)), c, "f")
                   for c in ((True,) * 6 + (False,) * 2, (True,) * 2 + (False,) * 6))
    results = [Result(model="m", variant=v, settings={}, run_id="r", metrics={
        "kl_divergence": kl, "tasks": {"edgekit_nextline": paired_accuracy(base, mine)}})
        for v, kl, mine in (("fp32", 0.0, base), ("int2-g64", 0.7, worse))]
    figs = figures_from(results)
    (only,) = figs["rows"]
    assert (only["variant"], only["right_to_wrong"], only["wrong_to_right"], only["kl"]) == ("int2-g64", 4, 0, 0.7)
    assert only["base_accuracy"] == 0.75 and only["accuracy"] == 0.25 and figs["baseline"] == "fp32"
