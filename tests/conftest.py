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
    from edgekit.models.load import resolve_source

    return resolve_source("default")


@pytest.fixture(scope="session")
def tokenizer(default_model):
    from edgekit.models.load import load_tokenizer

    return load_tokenizer(default_model)


@pytest.fixture(scope="session")
def eval_ids(tokenizer):
    """The first 1,024 tokens of the eval split: enough windows for statistics, fast on a CPU."""
    from edgekit.core.paths import eval_token_ids

    return eval_token_ids(tokenizer, "eval")[:1024]


@pytest.fixture(scope="session")
def onnx_artifact(default_model):
    """``onnx_artifact("onnx-int8")`` -> the artifact folder of that variant, exported once per session."""
    from edgekit.runtimes import cached_artifact

    return lambda variant: cached_artifact(variant, default_model)


SMALL_EVAL = dict(context=128, stride=64, max_tokens=512, batch_size=4)


@pytest.fixture(scope="session")
def small_eval_settings():
    """Short windows over the first 512 eval tokens: what the runtime tests score variants on."""
    from edgekit.measure.quality import EvalSettings

    return EvalSettings(**SMALL_EVAL)


@pytest.fixture(scope="session")
def fp32_baseline(default_model, tokenizer, eval_ids, small_eval_settings):
    """The PyTorch fp32 scores (log-probs kept) that every runtime's variants are compared against."""
    from edgekit.measure.quality import score
    from edgekit.runtimes import build_runner

    runner = build_runner("fp32", default_model, tokenizer)
    scores = score(runner, eval_ids, small_eval_settings, keep_logprobs=True, progress=False)
    runner.close()
    return scores


@pytest.fixture(scope="session")
def quality_against_fp32(default_model, tokenizer, eval_ids, small_eval_settings, fp32_baseline):
    """``measure(name)``: build a runtime's variant, score it on the fp32 baseline's tokens (checking it
    scores the same tokens and counts its weights) and return its KL / top-1 against the baseline."""
    from edgekit.measure.quality import score
    from edgekit.runtimes import build_runner

    def measure(name: str) -> dict:
        runner = build_runner(name, default_model, tokenizer)
        try:
            scores = score(runner, eval_ids, small_eval_settings, baseline=fp32_baseline, progress=False)
            assert scores.scored_tokens == fp32_baseline.scored_tokens
            assert runner.weight_bytes() > 0
            return scores.against(fp32_baseline)
        finally:
            runner.close()

    return measure


@pytest.fixture(scope="session")
def biased_checkpoint(tmp_path_factory, default_model):
    """A tiny random Qwen2 (q/k/v biases, bf16 shards): exercises biases and a checkpoint dtype unlike fp32."""
    import shutil

    from transformers import AutoModelForCausalLM, Qwen2Config

    folder = tmp_path_factory.mktemp("tiny-qwen2")
    config = Qwen2Config(vocab_size=4096, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, architectures=["Qwen2ForCausalLM"])
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).to(torch.bfloat16).save_pretrained(folder, max_shard_size="200KB")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(f"{default_model}/{name}", folder / name)
    return str(folder)


@pytest.fixture(scope="session")
def task_compare(tmp_path_factory):
    """``edgekit compare --tasks`` on the default model, run once for the session (the CLI in a child process):
    ``(process, JSON rows, store)``. The compare tests read it; the sweep test checks its rows answer alike.
    Packed RTN only (LLM.int8 scores slowly on a CPU); 30 items a task let int2-g64's flips set the rows' flip
    rates apart, so the KL relation has a rank correlation to print."""
    import json
    import subprocess
    import sys

    from edgekit.measure.store import ResultStore

    tmp = tmp_path_factory.mktemp("compare-tasks")
    env = {**os.environ, "EDGEKIT_HOME": str(tmp)}
    proc = subprocess.run([sys.executable, "-m", "edgekit", "compare", "--model", "default", "--variants",
                           "fp32,int8-g64,int4-g32,int2-g64", "--max-tokens", "256", "--context", "128", "--stride",
                           "64", "--no-latency", "--tasks", "edgekit_lastword,edgekit_nextline", "--task-limit",
                           "30", "--json", str(tmp / "out.json")],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, json.loads((tmp / "out.json").read_text()), ResultStore(tmp / "results.sqlite")


@pytest.fixture(scope="session")
def default_lm():
    """edgekit's lm-eval model over the default model's fp32 Runner, built once for the session."""
    from edgekit.workflows.tasks import EdgekitLM

    return EdgekitLM(model="default", variant="fp32", batch_size=4)


@pytest.fixture(scope="session")
def gemma_checkpoint(tmp_path_factory, default_model):
    """A tiny random Gemma 3 shaped like the real one (head_dim 32 apart from hidden/heads = 16, one KV head, a
    sliding window of 16 tokens on two of its three layers, tied head, q/k norms, embeddings scaled by
    sqrt(hidden)) with the default model's vocabulary and a tokenizer that begins every text with BOS, as Gemma's
    does; saved as safetensors."""
    from tokenizers import processors
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from edgekit.models.load import load_tokenizer

    folder = tmp_path_factory.mktemp("tiny-gemma3")
    tokenizer = load_tokenizer(default_model)
    bos = tokenizer.bos_token
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tokenizer.bos_token_id)])
    tokenizer.save_pretrained(folder)
    config = Gemma3TextConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                              num_attention_heads=4, num_key_value_heads=1, head_dim=32, sliding_window=16,
                              layer_types=["sliding_attention", "sliding_attention", "full_attention"],
                              max_position_embeddings=1024, tie_word_embeddings=True,
                              bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                              pad_token_id=tokenizer.pad_token_id, architectures=["Gemma3ForCausalLM"])
    torch.manual_seed(0)
    Gemma3ForCausalLM(config).save_pretrained(folder)
    return str(folder)
