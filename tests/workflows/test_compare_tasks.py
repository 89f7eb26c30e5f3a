"""`edgekit compare --tasks`: task accuracy per variant, paired against the baseline, in the table,
the JSON and the store."""
import pytest

from edgekit.measure.paired import mcnemar_exact_p

TASKS = ("edgekit_lastword", "edgekit_nextline")
TASK_KEYS = {"task_accuracy", "task_accuracy_delta_ci95", "flips_right_to_wrong", "flips_wrong_to_right",
             "mcnemar_p", "prompt_fingerprint", "task_items"}


@pytest.fixture(scope="module")
def compared(task_compare):  # the session's one `compare --tasks` run (tests/conftest.py)
    return task_compare


def test_json_has_each_tasks_paired_figures(compared):
    _, rows, _ = compared
    assert [r["variant"] for r in rows] == ["fp32", "int8-g64", "int4-g32", "int2-g64"]
    limit = rows[0]["settings"]["task_limit"]
    base = rows[0]["tasks"]
    for row in rows:
        assert set(row["tasks"]) == set(TASKS)
        for task, m in row["tasks"].items():
            assert TASK_KEYS <= set(m) and m["task_items"] == limit
            assert m["prompt_fingerprint"] == base[task]["prompt_fingerprint"]
            ours, theirs = m["task_correct"], base[task]["task_correct"]
            right_to_wrong = sum(b == "1" and o == "0" for o, b in zip(ours, theirs))
            wrong_to_right = sum(b == "0" and o == "1" for o, b in zip(ours, theirs))
            assert (m["flips_right_to_wrong"], m["flips_wrong_to_right"]) == (right_to_wrong, wrong_to_right)
            assert m["task_accuracy"] == pytest.approx(ours.count("1") / limit)
            assert m["mcnemar_p"] == pytest.approx(mcnemar_exact_p(right_to_wrong, wrong_to_right))
            low, high = m["task_accuracy_delta_ci95"]
            assert low <= m["task_accuracy"] - base[task]["task_accuracy"] + 1e-9 and \
                m["task_accuracy"] - base[task]["task_accuracy"] - 1e-9 <= high
    assert all(m["task_accuracy_delta_ci95"] == [0.0, 0.0] for m in base.values())


def test_table_shows_accuracy_delta_flips_and_mcnemar_and_the_kl_relation(compared):
    proc, _, _ = compared
    for task in TASKS:
        for column in ("acc", "Δacc [95%]", "flips -/+", "McNemar p"):
            assert f"{task} {column}" in proc.stdout
        assert f"{task}: flip rate against KL: " in proc.stdout
    assert "flip rate against KL: Spearman rho" in proc.stdout  # int2-g64 flips answers; int8-g64 hardly any


def test_store_keeps_per_item_answers_and_task_columns(compared):
    _, rows, store = compared
    frame = store.dataframe(kind="compare")
    assert list(frame["variant"]) == [r["variant"] for r in rows]
    for task in TASKS:
        assert list(frame[f"{task}.task_correct"]) == [r["tasks"][task]["task_correct"] for r in rows]
        assert f"{task}.mcnemar_p" in frame and f"{task}.prompt_fingerprint" in frame


def test_an_unknown_task_fails_before_any_work(tmp_path, capsys):
    from edgekit.cli import main

    assert main(["compare", "--no-latency", "--store", str(tmp_path / "r.sqlite"), "--tasks", "nope_task"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("edgekit: error: unknown task 'nope_task'") and "\n" not in err
