"""The `evaluate` perplexity module shipped in edgekit: same numbers as edgekit.measure.quality,
as the HF guide's loop, and (where the hub is reachable) as the hub's `perplexity` metric."""
import math

import evaluate
import pytest
import torch
from hf_guide import hf_guide_perplexity

from edgekit.core.paths import read_split
from edgekit.measure.quality import EvalSettings, score
from edgekit.runtimes import build_runner
from edgekit.workflows.metrics import perplexity_metric_path

CONTEXT, STRIDE = 128, 64


@pytest.fixture(scope="module")
def metric():
    return evaluate.load(perplexity_metric_path())  # a local path: loads offline


@pytest.fixture(scope="module")
def texts():
    text = read_split("eval")
    return [text[:2500], text[5000:5400]]


@pytest.fixture(scope="module")
def fp32(default_model, tokenizer):
    runner = build_runner("fp32", default_model, tokenizer)
    yield runner
    runner.close()


@pytest.fixture(scope="module")
def computed(metric, texts, default_model):
    return metric.compute(predictions=texts, model_id=default_model, context=CONTEXT, stride=STRIDE)


def ids_of(tokenizer, text):
    return tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"][0]


def test_metric_equals_edgekit_measure_exactly(computed, texts, fp32, tokenizer):
    settings = EvalSettings(CONTEXT, STRIDE, None)
    expected = [score(fp32, ids_of(tokenizer, t), settings, progress=False) for t in texts]
    assert computed["perplexities"] == [s.perplexity()["perplexity"] for s in expected]
    assert computed["mean_perplexity"] == sum(computed["perplexities"]) / len(texts)
    nll = sum(float(s.nll.sum()) for s in expected)
    assert computed["scored_tokens"] == sum(s.scored_tokens for s in expected)
    assert computed["perplexity"] == math.exp(nll / computed["scored_tokens"])
    assert len(ids_of(tokenizer, texts[0])) > CONTEXT  # the first text really spans several windows


@torch.inference_mode()
def test_metric_matches_the_hf_guide_loop(computed, texts, fp32, tokenizer):
    """The loop of https://huggingface.co/docs/transformers/perplexity, on the model's own loss."""
    for text, ppl in zip(texts, computed["perplexities"]):
        expected, _ = hf_guide_perplexity(ids_of(tokenizer, text), CONTEXT, STRIDE,
                                          lambda input_ids, target_ids: fp32.model(input_ids, labels=target_ids).loss)
        assert ppl == pytest.approx(expected, rel=1e-5)


def test_agrees_with_the_hub_metric_where_reachable(metric, default_model):
    """The hub's metric scores each text in one window; on texts that fit one, the two agree."""
    try:
        hub = evaluate.load("perplexity", module_type="metric")
    except Exception as exc:  # offline, hub blocked or metric moved: nothing to compare against
        pytest.skip(f"the hub's perplexity metric is unreachable here ({type(exc).__name__}: {str(exc)[:120]})")
    texts = ["To be, or not to be, that is the question:", "O brave new world, that has such people in't!"]
    ours = metric.compute(predictions=texts, model_id=default_model, context=CONTEXT, stride=STRIDE)
    theirs = hub.compute(predictions=texts, model_id=default_model, add_start_token=False, batch_size=1,
                         device="cpu")
    assert ours["perplexities"] == pytest.approx(theirs["perplexities"], rel=1e-4)


def test_loads_from_the_file_path_too():
    import os

    metric = evaluate.load(os.path.join(perplexity_metric_path(), "perplexity.py"))
    assert metric.name == "perplexity" and "predictions" in metric.features
