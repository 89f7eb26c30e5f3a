"""edgekit.models.names: the named-model registry, its resolver, and the real pretrained model `make setup`
installs."""
import pytest
import torch

from edgekit.core.errors import ModelSourceError
from edgekit.models.load import resolve_source
from edgekit.models.names import MODELS, model_names, named_model, original_gguf

SMOL = MODELS["smollm2-135m"]
needs_smol = pytest.mark.skipif(not SMOL.installed(), reason="smollm2-135m is installed by `make setup`")


def test_names_and_the_default_model():
    assert model_names()[:2] == ["default", "smollm2-135m"]
    assert named_model("") is MODELS["default"]
    assert resolve_source("default") == str(MODELS["default"].folder) == resolve_source(" ")
    assert MODELS["default"].card.is_file() and SMOL.card.is_file()  # every named model has a card in data/


def test_a_missing_named_model_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKIT_MODELS", str(tmp_path))
    assert SMOL.folder == tmp_path / "smollm2-135m" and not SMOL.installed()
    with pytest.raises(ModelSourceError, match="make setup"):
        resolve_source("smollm2-135m")


def test_other_sources_pass_through_and_a_bad_one_lists_the_names(tmp_path):
    assert resolve_source("org/some-model") == "org/some-model"  # a hub id
    with pytest.raises(ModelSourceError, match="smollm2-135m"):
        resolve_source("./no/such/folder")
    assert original_gguf(tmp_path) is None


@needs_smol
def test_smollm2_is_the_real_model_with_llama_cpps_token_ids():
    """The saved folder is the GGUF's model: tied 576-wide Llama, tokenizer ids equal llama.cpp's on its
    own file (a few hundred tokens), and greedy decoding knows the capital of France."""
    from llama_cpp import Llama

    from edgekit.core.paths import read_split
    from edgekit.models.load import load_model, load_tokenizer

    folder = resolve_source("smollm2-135m")
    gguf = original_gguf(folder)
    assert gguf is not None and gguf.name == SMOL.original_gguf
    tokenizer = load_tokenizer("smollm2-135m")
    text = read_split("eval")[:1500]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    vocab = Llama(str(gguf), vocab_only=True, verbose=False)
    try:
        assert vocab.tokenize(text.encode(), add_bos=False, special=False) == ids and len(ids) > 300
    finally:
        vocab.close()
    assert tokenizer("Hi")["input_ids"] == tokenizer("Hi", add_special_tokens=False)["input_ids"]  # no BOS added
    model = load_model("smollm2-135m", dtype=torch.float32)
    assert model.config.hidden_size == 576 and model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    prompt = tokenizer("The capital of France is", return_tensors="pt")
    out = model.generate(**prompt, max_new_tokens=3, do_sample=False)
    assert tokenizer.decode(out[0, prompt["input_ids"].shape[1]:]).strip().startswith("Paris")
