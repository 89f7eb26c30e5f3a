"""llama.cpp variants: GGUF conversion with the pre-tokenizer mapping, scores against PyTorch, verified artifacts."""
import json
import shutil

import pytest
import torch

pytest.importorskip("llama_cpp")

from edgekit.core.errors import ArtifactError, VariantError  # noqa: E402
from edgekit.core.paths import read_split  # noqa: E402
from edgekit.runtimes import (
    build_runner,  # noqa: E402
    cached_artifact,  # noqa: E402
    load_artifact,  # noqa: E402
)
from edgekit.runtimes.llama_cpp import MODEL_FILE, convert_to_gguf, pre_tokenizer_mapping  # noqa: E402
from edgekit.variants.registry import Variant  # noqa: E402


def test_gpt2_style_byte_level_bpe_maps_to_llama_cpp_gpt2(default_model, tmp_path):
    from pathlib import Path

    assert pre_tokenizer_mapping(Path(default_model)) == "gpt-2"
    spec = json.loads((Path(default_model) / "tokenizer.json").read_text())
    spec["pre_tokenizer"]["add_prefix_space"] = True
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    assert pre_tokenizer_mapping(tmp_path) is None


def test_gguf_vocabulary_tokenizes_like_the_hf_tokenizer(default_model, tokenizer):
    from llama_cpp import Llama

    path = cached_artifact(Variant.parse("gguf-q8_0"), default_model) / MODEL_FILE
    vocab = Llama(str(path), vocab_only=True, verbose=False)
    samples = (read_split("eval")[:3000], read_split("eval_milton")[:3000], "  Hello,  world!\n\n\tO'er 1234 — ’tis")
    for text in samples:
        assert vocab.tokenize(text.encode(), add_bos=False, special=False) == \
            tokenizer(text, add_special_tokens=False)["input_ids"]


def test_unknown_pre_tokenizer_is_refused(default_model, tmp_path):
    from pathlib import Path

    model = tmp_path / "model"
    shutil.copytree(default_model, model)
    spec = json.loads((model / "tokenizer.json").read_text())
    spec["pre_tokenizer"]["add_prefix_space"] = True
    (model / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(VariantError, match="tokenizer"):
        convert_to_gguf(str(model), tmp_path / "out.gguf")
    assert not Path(tmp_path / "out.gguf").exists()


@pytest.mark.parametrize("name", ["gguf-q8_0", "gguf-q4_0", "gguf-q4_k_m"])
def test_variant_scores_against_the_pytorch_baseline(name, quality_against_fp32):
    quality = quality_against_fp32(name)
    assert 0 < quality["kl_divergence"] < (0.01 if name == "gguf-q8_0" else 0.2)
    assert quality["top1_agreement"] > (0.95 if name == "gguf-q8_0" else 0.8)


def test_greedy_decode_follows_its_own_logits(default_model, tokenizer, eval_ids):
    runner = build_runner("gguf-q4_0", default_model, tokenizer)
    prompt = eval_ids[:16].reshape(1, -1)
    generated = list(runner.generate_stream(prompt, 8))
    full = torch.cat([prompt, torch.tensor([generated[:-1]])], dim=1)
    assert generated == runner.logits(full)[0, prompt.shape[1] - 1:].argmax(-1).tolist()
    runner.close()


def test_tampered_gguf_is_refused(default_model, tmp_path):
    folder = tmp_path / "gguf"
    shutil.copytree(cached_artifact(Variant.parse("gguf-q4_0"), default_model), folder)
    runner = load_artifact(folder)
    assert runner.weight_bytes() > 0
    runner.close()
    path = folder / MODEL_FILE
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256"):
        load_artifact(folder)


def test_unknown_option_is_refused(default_model):
    with pytest.raises(VariantError, match="unknown option"):
        build_runner("gguf-q4_0:group_size=32", default_model)
