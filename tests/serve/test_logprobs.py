"""``/v1/completions`` with ``logprobs`` and ``echo``: the Runner's own log-softmax, and lm-eval's
``local-completions`` scoring a served artifact as the direct backend scores it."""
import httpx
import pytest
import torch
from lm_eval.api.instance import Instance
from lm_eval.models.openai_completions import LocalCompletionsAPI

from edgekit.runtimes import load_artifact
from edgekit.serve.app import create_app, serve_in_background
from edgekit.workflows.tasks import EdgekitLM

VARIANT = "onnx-int4-g32"
PROMPT = "Good my lord, what"


@pytest.fixture(scope="module")
def artifact(onnx_artifact):
    return onnx_artifact(VARIANT)


@pytest.fixture(scope="module")
def url(artifact):
    with serve_in_background(create_app(artifact, max_new_tokens=16)) as base:
        yield base


@pytest.fixture(scope="module")
def runner(artifact):
    return load_artifact(artifact)


def complete(url, **body):
    return httpx.post(url + "/v1/completions", json={"model": VARIANT, "temperature": 0, **body}, timeout=120)


def test_echoed_logprobs_are_the_runners_log_softmax(url, runner, tokenizer):
    reply = complete(url, prompt=PROMPT, max_tokens=2, echo=True, logprobs=5).json()["choices"][0]
    ids = tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    lp = reply["logprobs"]
    assert len(lp["tokens"]) == len(ids) + 2 and lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    first = int(torch.log_softmax(runner.logits(torch.tensor([ids]))[0, -1], -1).argmax())
    seq = torch.tensor([ids + [first]])
    logp = torch.log_softmax(runner.logits(seq)[0].float(), -1)
    for pos in range(1, seq.shape[1]):
        assert lp["token_logprobs"][pos] == pytest.approx(float(logp[pos - 1, seq[0, pos]]), abs=1e-5)
        values, top_ids = logp[pos - 1].topk(5)
        expected = {tokenizer.decode([i]): v for i, v in zip(top_ids.tolist(), values.tolist())}
        assert lp["top_logprobs"][pos] == pytest.approx(expected, abs=1e-5)
    assert lp["token_logprobs"][-1] == pytest.approx(float(logp[-1].max()), abs=1e-5)  # greedy: the top one
    assert reply["text"].startswith(PROMPT) and lp["tokens"][len(ids)] == tokenizer.decode([first])


def test_a_token_id_prompt_answers_as_its_text(url, tokenizer):
    ids = tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    by_text = complete(url, prompt=PROMPT, max_tokens=1, echo=True, logprobs=1).json()["choices"][0]
    by_ids = complete(url, prompt=[ids], max_tokens=1, echo=True, logprobs=1).json()["choices"][0]
    assert by_ids["logprobs"] == by_text["logprobs"] and by_ids["text"] == by_text["text"]
    without = complete(url, prompt=PROMPT, max_tokens=3).json()["choices"][0]
    assert without["logprobs"] is None


@pytest.mark.parametrize("body,status", [
    ({"prompt": PROMPT, "logprobs": 1, "stream": True}, 400),
    ({"prompt": PROMPT, "logprobs": 6}, 400),
    ({"prompt": [[1, 2], [3]], "logprobs": 1}, 400),
    ({"prompt": [10 ** 9], "echo": True}, 400),
])
def test_what_cannot_be_scored_is_refused(url, body, status):  # OpenAI answers invalid requests 400
    reply = complete(url, max_tokens=1, **body)
    assert reply.status_code == status and "\n" not in reply.json()["error"]["message"]


def test_lm_evals_local_completions_scores_the_served_artifact_as_the_direct_backend(url, artifact, runner,
                                                                                     default_model):
    requests = [Instance("loglikelihood", {}, (ctx, cont), 0, ("t", i, 1)) for i, (ctx, cont) in enumerate([
        ("HAMLET.\nTo be, or not to be, that is the", " question"),
        ("KING.\nHow is it that the clouds still hang on", " you?"),
        ("Good my lord,", " what is your will?")])]
    served = LocalCompletionsAPI(base_url=url + "/v1/completions", model=VARIANT, tokenizer_backend="huggingface",
                                 tokenizer=default_model, max_length=256)
    direct = EdgekitLM(model=default_model, runner=runner)
    ours, theirs = direct.loglikelihood(requests), served.loglikelihood(requests)
    assert [g for _, g in theirs] == [g for _, g in ours]
    assert [x for x, _ in theirs] == pytest.approx([x for x, _ in ours], abs=1e-4)
