"""edgekit as an lm-eval model: the same answers as lm-eval's own ``hf`` backend, on every request type,
the shipped offline tasks, and one-line refusals of tasks that cannot run."""
import subprocess
import sys
from pathlib import Path

import pytest
from lm_eval import simple_evaluate
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM
from tokenizers.processors import TemplateProcessing

from edgekit.core.errors import EdgekitError
from edgekit.measure.paired import paired_accuracy
from edgekit.models.load import load_tokenizer, resolve_source
from edgekit.models.names import named_model
from edgekit.runtimes import build_runner
from edgekit.workflows.tasks import EdgekitLM, evaluate_tasks, load_tasks, shipped_tasks, task_manager

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ["edgekit_lastword", "edgekit_nextline"]
# smollm2-135m fp32: the first LIMIT items of each shipped task, item by item and request by request (every item
# matched in benchmarks/task_agreement_hf.py; 8 keeps the suite's share small: one batch of each backend per task)
LIMIT = 8


def hf_backend(source: str) -> HFLM:
    return HFLM(pretrained=source, dtype="float32", batch_size=LIMIT, device="cpu")


def per_item(results: dict) -> dict:
    """task -> doc id -> (acc, the log-likelihoods of its requests) from lm-eval's logged samples."""
    return {task: {s["doc_id"]: (s["acc"], [float(r[0][0]) for r in s["resps"]]) for s in samples}
            for task, samples in results["samples"].items()}


@pytest.mark.skipif(not named_model("smollm2-135m").installed(), reason="smollm2-135m is installed by make setup")
def test_same_per_item_answers_as_lm_evals_hf_backend_on_smollm2_fp32():
    source = resolve_source("smollm2-135m")
    tasks = load_tasks(SHIPPED)
    ours = per_item(simple_evaluate(model=EdgekitLM(model="smollm2-135m", variant="fp32", batch_size=LIMIT),
                                    tasks=tasks, limit=LIMIT, bootstrap_iters=0, task_manager=task_manager(SHIPPED)))
    theirs = per_item(simple_evaluate(model=hf_backend(source), tasks=load_tasks(SHIPPED), limit=LIMIT,
                                      bootstrap_iters=0, task_manager=task_manager(SHIPPED)))
    assert set(ours) == set(SHIPPED) and set(theirs) == set(SHIPPED)
    for task in SHIPPED:
        assert len(ours[task]) == LIMIT
        assert {d: acc for d, (acc, _) in ours[task].items()} == {d: acc for d, (acc, _) in theirs[task].items()}
        for doc, (_, logliks) in ours[task].items():
            assert logliks == pytest.approx(theirs[task][doc][1], abs=2e-3)


@pytest.fixture(scope="module")
def default_pair(default_lm, default_model):
    return default_lm, hf_backend(default_model)


@pytest.fixture(scope="module")
def fp32_answers(default_lm):
    """The default model's fp32 answers to the first 8 items of each shipped task."""
    return evaluate_tasks(default_lm, SHIPPED, limit=8)


def request(kind: str, args: tuple, doc_id: int = 0) -> Instance:
    return Instance(request_type=kind, doc={}, arguments=args, idx=0, metadata=("t", doc_id, 1))


def test_generate_until_and_rolling_match_the_hf_backend(default_pair):
    ours, theirs = default_pair
    gen = [request("generate_until", (p, {"until": ["\n\n"], "max_gen_toks": 12}), i)
           for i, p in enumerate(["HAMLET.\nTo be, or not to be,", "Enter the Ghost", "KING.\nHow now"])]
    assert ours.generate_until(gen) == theirs.generate_until(gen)
    rolling = [request("loglikelihood_rolling", (text,), i) for i, text in enumerate(
        ["O, that this too too solid flesh would melt,\nThaw and resolve itself into a dew!", "Ay, madam."])]
    assert ours.loglikelihood_rolling(rolling) == pytest.approx(theirs.loglikelihood_rolling(rolling), abs=1e-3)
    assert set(ours.prompt_tokens["t"]) == {(0, 0), (1, 0), (2, 0)}


def test_loglikelihood_with_empty_context_and_truncation_matches(default_model):
    ours = EdgekitLM(model="default", variant="fp32", batch_size=4, max_length=16)
    theirs = HFLM(pretrained=default_model, dtype="float32", batch_size=4, device="cpu", max_length=16)
    reqs = [request("loglikelihood", ("", " to be"), 0),
            request("loglikelihood", ("Words, words, words. " * 6 + "What do you", " read, my lord?"), 1)]
    a, b = ours.loglikelihood(reqs), theirs.loglikelihood(reqs)
    assert [g for _, g in a] == [g for _, g in b]
    assert [x for x, _ in a] == pytest.approx([x for x, _ in b], abs=1e-3)
    assert len(ours.prompt_tokens["t"][(1, 0)]) == 17  # what the model saw (16) and the last token it scored


def test_an_onnx_artifact_answers_the_shipped_tasks_as_fp32_does(fp32_answers):
    onnx = evaluate_tasks(EdgekitLM(model="default", variant="onnx-fp32"), SHIPPED, limit=8)
    for task in SHIPPED:
        assert onnx[task].fingerprint == fp32_answers[task].fingerprint  # the same tokenizer, the same prompts
        assert onnx[task].correct == fp32_answers[task].correct
        assert onnx[task].doc_ids == tuple(range(8))


def test_a_tokenizer_that_adds_bos_changes_the_fingerprint_and_pairing_is_refused(default_model, fp32_answers):
    """lm-eval #2676: the same task, one tokenizer adding BOS and one not, must not be paired."""
    bos = load_tokenizer(default_model)
    bos._tokenizer.post_processor = TemplateProcessing(single=f"{bos.bos_token} $A", pair=f"{bos.bos_token} $A $B",
                                                       special_tokens=[(bos.bos_token, bos.bos_token_id)])
    plain = fp32_answers["edgekit_lastword"]
    with_bos = evaluate_tasks(EdgekitLM(model="default", runner=build_runner("fp32", default_model, bos)),
                              ["edgekit_lastword"], limit=8)["edgekit_lastword"]
    assert with_bos.doc_ids == plain.doc_ids and plain.fingerprint != with_bos.fingerprint
    with pytest.raises(EdgekitError, match="token ids differ"):
        paired_accuracy(plain, with_bos)


def test_unknown_and_unreachable_tasks_are_refused_in_one_line():
    with pytest.raises(EdgekitError, match="unknown task 'no_such_task'") as info:
        load_tasks(["no_such_task"])
    assert "\n" not in str(info.value) and "edgekit_lastword" in str(info.value)
    with pytest.raises(EdgekitError, match="arc_easy: its data could not be read") as info:
        load_tasks(["arc_easy"])  # the tests run offline: the hub is not reachable
    assert "\n" not in str(info.value)


def test_shipped_tasks_are_built_by_the_script_and_big_enough():
    assert shipped_tasks() == SHIPPED
    assert subprocess.run([sys.executable, "tools/build_tasks.py", "--check"], cwd=ROOT).returncode == 0
    for task in SHIPPED:
        assert len((ROOT / "data" / "tasks" / f"{task}.jsonl").read_text().splitlines()) >= 500


def test_the_lm_eval_command_line_runs_the_edgekit_model(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "edgekit.workflows.tasks", "--model", "edgekit", "--model_args",
                           "model=default,variant=int8", "--tasks", "edgekit_nextline", "--limit", "8",
                           "--output_path", str(tmp_path)], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "edgekit_nextline" in proc.stdout and "acc" in proc.stdout

