"""Where edgekit reads and writes: the shipped data (corpus splits, model configs, the default
model) and the work folder (results, artifacts, caches); and the one way text becomes token ids.

``EDGEKIT_DATA`` overrides the data folder (default: ``data/`` beside the package);
``EDGEKIT_HOME`` the work folder (default: ``./edgekit-results``).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from edgekit.core.errors import EdgekitError, InputError, VariantError

SPLITS = ("train", "calibration", "eval", "eval_milton")
DEFAULT_MODEL_NAME = "tiny-shakespeare-llama"


def data_dir() -> Path:
    return Path(os.environ.get("EDGEKIT_DATA", Path(__file__).resolve().parents[2] / "data"))


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


def work_dir() -> Path:
    """Where edgekit writes results, artifacts and reports (``EDGEKIT_HOME``, default ./edgekit-results)."""
    path = Path(os.environ.get("EDGEKIT_HOME", "edgekit-results"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def eval_token_ids(tokenizer, eval_text: str = "eval"):
    """Token ids (a 1-D tensor) of a corpus split name (``eval``, ``eval_milton``...), a text file path, or raw
    text."""
    if eval_text in SPLITS:
        text = read_split(eval_text)
    elif len(eval_text) < 4096 and "\n" not in eval_text and Path(eval_text).expanduser().is_file():
        text = Path(eval_text).expanduser().read_text(encoding="utf-8")
    elif len(eval_text) < 4096 and "\n" not in eval_text and ("/" in eval_text or eval_text.endswith(".txt")):
        raise InputError(f"no text file at {eval_text!r}; pass an existing file, a split ({', '.join(SPLITS)}) or the "
                         f"text itself")
    else:
        text = eval_text
    return tokenizer(text, return_tensors="pt", add_special_tokens=False, verbose=False)["input_ids"][0]


def bos_token_id(tokenizer) -> int | None:
    """The BOS rule: the id a model's tokenizer puts before every text it encodes (Gemma's ``<bos>``), or None
    when its own encoding adds none (the default model, SmolLM2). Read from the tokenizer itself, its encoding
    of one character with and without special tokens, so a GGUF's ``add_bos_token`` and a tokenizer.json's
    post-processor decide it alike. Every scored window begins with it (:func:`edgekit.measure.quality.score`),
    as llama.cpp's ``perplexity`` and lm-eval's rolling windows begin theirs; a model trained always to see it
    scores several times worse without it (Gemma 3 270M: 180.6 against 27.8 on 512 eval tokens)."""
    if tokenizer is None or tokenizer.bos_token_id is None:
        return None
    bos = int(tokenizer.bos_token_id)
    plain = tokenizer("a", add_special_tokens=False, verbose=False)["input_ids"]
    special = tokenizer("a", verbose=False)["input_ids"]
    return bos if special[:1] == [bos] and plain[:1] != [bos] else None


def begin_with_bos(windows: torch.Tensor, tokenizer) -> torch.Tensor:
    """``windows`` [n, length] as the model sees text under the BOS rule (:func:`bos_token_id`): when the
    tokenizer adds BOS, each window becomes BOS followed by its first ``length - 1`` tokens; otherwise it is
    unchanged. Calibration and training windows follow the rule the scored windows follow, so a model
    trained always to see BOS is calibrated and tuned on the activations it has in use (without it,
    Gemma's first positions see inputs it never met in training)."""
    bos = bos_token_id(tokenizer)
    if bos is None:
        return windows
    return torch.cat([torch.full_like(windows[:, :1], bos), windows[:, :-1]], dim=1)


def cache_key(*parts: Any) -> str:
    """The one key of a work cache (baselines, rankings, QAT runs, self-test verdicts): a short sha256 of
    ``parts`` as canonical JSON, so equal settings give equal keys however a dict was ordered."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


# calibration windows come from the calibration split (Macbeth: a whole work the eval text does not contain)
SAMPLES, SEQ_LEN = 16, 256  # the calibration windows every calibrated variant takes by default (and the planner
                            # prices)
BATCH_SIZE = 8  # windows run through the model at once


def calibration_ids(tokenizer, samples: int = SAMPLES, seq_len: int = SEQ_LEN, seed: int = 0) -> torch.Tensor:
    """``samples`` random windows of ``seq_len`` tokens from the calibration split (seeded), [samples, seq_len],
    each beginning with BOS where the model's tokenizer adds one (:func:`begin_with_bos`)."""
    ids = tokenizer(read_split("calibration"), return_tensors="pt", add_special_tokens=False,
                    verbose=False)["input_ids"][0]
    if len(ids) <= seq_len:
        raise VariantError(f"the calibration split has {len(ids)} tokens; use seq_len below that")
    starts = np.random.default_rng(seed).integers(0, len(ids) - seq_len, size=samples)
    return begin_with_bos(torch.stack([ids[s : s + seq_len] for s in starts]), tokenizer)


def variant_calibration_ids(variant, tokenizer):
    """The calibration windows a calibrated or pruned variant asked for (options ``samples``, ``seq_len``,
    ``seed``; the recipe's defaults otherwise): the one recipe every calibrating method and the planner share."""
    return calibration_ids(tokenizer, int(variant.option("samples", SAMPLES)), int(variant.option("seq_len", SEQ_LEN)),
                           int(variant.option("seed", 0)))


def staged(folder: str | Path, build: Callable[[Path], Any]) -> Path:
    """Build ``folder`` with ``build(staging)`` in a staging folder beside it, moved into place only
    when complete, so an interrupted build never leaves a half-written folder. If another process
    finished the same folder first, theirs is kept. Every artifact, export and cache goes through here.
    A staging folder a killed process left (its pid, in the name, no longer running) is removed first."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(folder)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-{os.getpid()}-", dir=folder.parent))
    try:
        build(staging)
        try:
            staging.rename(folder)
        except OSError:
            if not folder.exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def remove_stale_staging(folder: Path) -> None:
    """Remove the staging folders of ``folder`` whose builder process (the pid in their name) is gone."""
    pattern = re.compile(rf"\.{re.escape(folder.name)}-(\d+)-[a-z0-9_]{{8}}")  # mkdtemp's 8-character suffix
    for staging in folder.parent.glob(f".{folder.name}-*"):
        match = pattern.fullmatch(staging.name)
        if match and staging.is_dir() and not _running(int(match.group(1))):
            shutil.rmtree(staging, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
