"""Shared test settings: offline, a private work folder, the shipped default model."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _work_folder(tmp_path_factory):
    """Results, artifacts and reports of the tests go to a temporary folder, never the user's."""
    path = tmp_path_factory.mktemp("edgekit-home")
    os.environ["EDGEKIT_HOME"] = str(path)
    torch.manual_seed(0)
    yield path


@pytest.fixture(scope="session")
def default_model():
    from edgekit.loading import resolve_source

    return resolve_source("default")


@pytest.fixture(scope="session")
def tokenizer(default_model):
    from edgekit.loading import load_tokenizer

    return load_tokenizer(default_model)


@pytest.fixture(scope="session")
def eval_ids(tokenizer):
    """The first 1,024 tokens of the eval split: enough windows for statistics, fast on a CPU."""
    from edgekit.compare import eval_token_ids

    return eval_token_ids(tokenizer, "eval")[:1024]


@pytest.fixture(scope="session")
def onnx_artifact(default_model):
    """``onnx_artifact("onnx-int8")`` -> the artifact folder of that variant, exported once per session."""
    from edgekit.onnx_variants import cached_artifact

    return lambda variant: cached_artifact(variant, default_model)


SMALL_EVAL = dict(context=128, stride=64, max_tokens=512, batch_size=4)


@pytest.fixture(scope="session")
def small_eval_settings():
    """Short windows over the first 512 eval tokens: what the runtime tests score variants on."""
    from edgekit.measure import EvalSettings

    return EvalSettings(**SMALL_EVAL)


@pytest.fixture(scope="session")
def fp32_baseline(default_model, tokenizer, eval_ids, small_eval_settings):
    """The PyTorch fp32 scores (log-probs kept) that every runtime's variants are compared against."""
    from edgekit.measure import score
    from edgekit.variants import build_runner

    runner = build_runner("fp32", default_model, tokenizer)
    scores = score(runner, eval_ids, small_eval_settings, keep_logprobs=True, progress=False)
    runner.close()
    return scores
