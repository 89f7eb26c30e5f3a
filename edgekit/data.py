"""Where the shipped data lives: corpus splits, model configs, device profiles, default model.

``EDGEKIT_DATA`` overrides the data folder (default: ``data/`` beside the package).
"""
from __future__ import annotations

import os
from pathlib import Path

from edgekit.errors import EdgekitError

SPLITS = ("train", "calibration", "eval", "eval_milton")
DEFAULT_MODEL_NAME = "tiny-shakespeare-llama"


def data_dir() -> Path:
    return Path(os.environ.get("EDGEKIT_DATA", Path(__file__).resolve().parent.parent / "data"))


def corpus_path(split: str) -> Path:
    if split not in SPLITS:
        raise EdgekitError(f"unknown corpus split {split!r}; choose one of {', '.join(SPLITS)}")
    path = data_dir() / "corpus" / f"{split}.txt"
    if not path.exists():
        raise EdgekitError(f"corpus split {path} is missing; regenerate it with "
                           "`python data/corpus/make_splits.py`")
    return path


def read_split(split: str) -> str:
    return corpus_path(split).read_text(encoding="utf-8")


def default_model_path() -> Path:
    return data_dir() / "models" / DEFAULT_MODEL_NAME
