"""A model's config from any source (a known 7B-class name, a folder, a hub id, a pasted dict) and the
shapes it implies, read from a meta-device model: parameter count, the decoder linears (exact, no weight read).
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

from edgekit.core.errors import ModelSourceError, VariantError
from edgekit.core.paths import data_dir
from edgekit.models.layout import block_linears, top_module
from edgekit.models.load import model_config


# ---------------------------------------------------------------- model configs
def known_models() -> list[str]:
    """Short names of the shipped 7B-class configs (``data/configs/*.json``)."""
    return sorted(p.stem for p in (data_dir() / "configs").glob("*.json"))


def load_config(config: Any):
    """A transformers config from a known short name, a config.json path, a model folder,
    ``"default"``, a hub id, a dict (a pasted config) or a config object."""

    if isinstance(config, PretrainedConfig):
        return config
    if isinstance(config, dict):
        return _config_from_dict(config, "the pasted config")
    text = str(config).strip()
    if text.startswith("{"):
        try:
            return _config_from_dict(json.loads(text), "the pasted config")
        except json.JSONDecodeError as exc:
            raise ModelSourceError(f"the pasted config is not valid JSON ({exc}); paste the whole "
                                   f"config.json") from None
    known = data_dir() / "configs" / f"{text}.json"
    if known.exists():
        return _config_from_dict(json.loads(known.read_text()), text)
    path = Path(text).expanduser()
    if path.is_file():
        try:
            return _config_from_dict(json.loads(path.read_text()), str(path))
        except json.JSONDecodeError as exc:
            raise ModelSourceError(f"{path} is not a JSON config ({exc}); pass a config.json") from None
    if path.is_dir() and (path / "config.json").exists() and not any(path.glob("*.safetensors")):
        return _config_from_dict(json.loads((path / "config.json").read_text()), str(path))
    try:
        return model_config(text)
    except ModelSourceError as exc:
        raise ModelSourceError(f"{exc}; known short names: {', '.join(known_models())}") from None


def _config_from_dict(values: dict, origin: str):

    values = dict(values)
    model_type = values.pop("model_type", None)
    if not model_type:
        raise ModelSourceError(f"{origin} has no model_type; paste a Hugging Face config.json (it names model_type)")
    try:
        return AutoConfig.for_model(model_type, **values)
    except ValueError as exc:
        raise ModelSourceError(f"{origin}: {exc}") from None


@lru_cache(maxsize=16)
def meta_layout(config_json: str, model_type: str) -> tuple:
    """(parameter count, [(module, out, in, bias) for decoder linears], [(top module, numel)]) of a meta model."""

    config = AutoConfig.for_model(model_type, **{k: v for k, v in json.loads(config_json).items()
                                                 if k != "model_type"})
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except (ValueError, KeyError) as exc:
        raise ModelSourceError(f"transformers cannot build a causal LM from this {model_type!r} config: "
                               f"{exc}") from None
    try:
        blocks = block_linears(model)
    except VariantError:  # no nn.Linear in its blocks (GPT-2's Conv1D): everything is priced as dense
        blocks = {}
    linears = [(name, m.out_features, m.in_features, m.bias is not None) for name, m in blocks.items()]
    in_linears = {f"{name}.{p}" for name, *_ in linears for p in ("weight", "bias")}
    others: dict[str, int] = {}
    for name, p in model.named_parameters():  # shared (tied) parameters are listed once
        if name not in in_linears:
            top = top_module(name)
            others[top] = others.get(top, 0) + p.numel()
    count = sum(p.numel() for p in model.parameters())
    return count, tuple(linears), tuple(others.items())


def config_layout(config):
    return meta_layout(config.to_json_string(use_diff=False), config.model_type)


def parameter_count(config) -> int:
    """Exact number of parameters (tied embeddings counted once)."""
    return config_layout(load_config(config))[0]


# ---------------------------------------------------------------- bytes per scheme
def decoder_linears(config) -> list[str]:
    """Names of the decoder blocks' linear layers (``model.layers.3.mlp.down_proj``...), from the meta model."""
    return [name for name, *_ in config_layout(load_config(config))[1]]
