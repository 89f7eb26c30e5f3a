"""Loading from "default", a local folder or a hub id, and every way a source can be wrong."""
import json
import shutil
from pathlib import Path

import pytest
import torch

from edgekit.core.errors import ModelSourceError
from edgekit.models.load import (
    UNKNOWN_REVISION,
    describe_model,
    load_model,
    load_tokenizer,
    model_revision,
    resolve_source,
)


def test_default_loads_with_plain_transformers(default_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(default_model)
    tokenizer = AutoTokenizer.from_pretrained(default_model)
    ids = tokenizer("To be, or not to be", return_tensors="pt")["input_ids"]
    assert model(ids).logits.shape == (1, ids.shape[1], model.config.vocab_size)


def test_default_model_shape_fits_every_quantizer(default_model):
    facts = describe_model("default")
    config = facts["config"]
    assert config["hidden_size"] % 128 == 0 and config["intermediate_size"] % 128 == 0
    model = load_model("default")
    params = sum(p.numel() for p in model.parameters())
    assert 5e6 <= params <= 30e6
    size = sum(p.stat().st_size for p in Path(default_model).glob("*.safetensors"))
    assert size < 60e6


def test_edgekit_load_matches_transformers(default_model):
    from transformers import AutoModelForCausalLM

    ids = torch.tensor([[5, 17, 300, 42]])
    ours = load_model("default")(ids).logits
    theirs = AutoModelForCausalLM.from_pretrained(default_model)(ids).logits
    assert torch.equal(ours, theirs)


def test_local_folder_path(default_model):
    assert resolve_source(default_model) == default_model
    assert load_tokenizer(default_model).pad_token is not None


def test_missing_path_says_what_to_do():
    with pytest.raises(ModelSourceError, match="no model folder"):
        resolve_source("./no/such/model")


def test_file_instead_of_folder(default_model):
    with pytest.raises(ModelSourceError, match="is a file"):
        resolve_source(f"{default_model}/config.json")


def test_folder_without_config(tmp_path):
    with pytest.raises(ModelSourceError, match="no config.json"):
        resolve_source(tmp_path)


def test_pickle_weights_are_refused(tmp_path, default_model):
    shutil.copy(f"{default_model}/config.json", tmp_path / "config.json")
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ModelSourceError, match="never unpickles"):
        load_model(tmp_path)


def test_folder_without_causal_lm_head(tmp_path):
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(tmp_path)
    with pytest.raises(ModelSourceError, match="causal"):
        load_model(tmp_path)


def test_remote_code_stays_off(tmp_path, default_model):
    shutil.copytree(default_model, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config.update(model_type="my-custom-lm", auto_map={"AutoModelForCausalLM": "modeling_custom.CustomLM"})
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelSourceError, match="ships its own code"):
        load_model(tmp_path / "m")


def test_hub_id_offline_fails_clearly(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelSourceError, match="hub.*HF_HUB_OFFLINE"):
        load_model("edgekit-test/definitely-not-cached-model")


def test_bad_hub_id_text():
    with pytest.raises(ModelSourceError):
        resolve_source("not a valid id!")


def test_model_revision_follows_the_bytes_not_the_path(tmp_path, default_model):
    """Same bytes anywhere give the same revision; a retrained model (one changed weight) gets a new one."""
    original = model_revision(default_model)
    assert original.startswith("sha256:") and model_revision("default") == original
    copy = tmp_path / "copy"
    shutil.copytree(default_model, copy)
    assert model_revision(copy) == original
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte in the middle of the tensors
    weights.write_bytes(bytes(data))
    assert model_revision(copy) != original


def test_model_revision_never_raises_for_sources_it_cannot_fingerprint(tmp_path):
    assert model_revision(tmp_path / "missing") == UNKNOWN_REVISION
    assert model_revision("nobody-has/this-model") == UNKNOWN_REVISION  # not in the local hub cache
