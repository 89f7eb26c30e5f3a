"""Load a causal LM and its tokenizer from ``"default"``, a local folder or a hub id, safely.

Safe by default: ``trust_remote_code`` stays off unless the caller asks, and a folder that
names code of its own (``auto_map``, or a tokenizer class transformers does not ship) is refused
before transformers reads it (:func:`refuse_remote_code`), weights load
from safetensors only (``use_safetensors=True``: no pickle is ever unpickled), and a hub
id respects offline mode (``HF_HUB_OFFLINE=1``). Every way a source can be wrong raises a
:class:`~edgekit.core.errors.ModelSourceError` that names the problem and the fix.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from huggingface_hub import try_to_load_from_cache
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

from edgekit.core.errors import ModelSourceError
from edgekit.models.names import MODELS, named_model_path
from edgekit.models.runner import module_weight_bytes

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def resolve_source(source: str | os.PathLike) -> str:
    """Map a named model (``"default"``, ``"smollm2-135m"``: :mod:`edgekit.models.names`) to its folder,
    check a local folder, or pass a hub id through."""
    text = str(source).strip() or "default"
    if text in MODELS:  # a named model: "default" (shipped) or one `make setup` installs (edgekit.models.names)
        return str(named_model_path(text))
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelSourceError(f"{path} is a file; pass the folder that holds config.json and the weights")
        config = path / "config.json"
        if not config.exists():
            raise ModelSourceError(f"{path} has no config.json, so it is not a Hugging Face model folder; "
                                   "save the model with save_pretrained() or pass a hub id")
        if not any(path.glob("*.safetensors")):
            raise ModelSourceError(f"{path} has no .safetensors weights; edgekit never unpickles .bin files. "
                                   "Convert them with `model.save_pretrained(dir, safe_serialization=True)`")
        return str(path.resolve())
    if text.startswith((".", "/", "~")) or text.count("/") > 1 or not _HUB_ID.match(text):
        raise ModelSourceError(f"no model folder at {text!r}; check the path, or pass a named model "
                               f"({', '.join(MODELS)}) or a hub id like org/name")
    return text


UNKNOWN_REVISION = "unknown"
_SAMPLE_BYTES = 1 << 20
_TENSOR_SAMPLE_BYTES = 4096


def model_revision(source: str | os.PathLike) -> str:
    """Which weights a result was measured on, so runs on a retrained or replaced model are never
    mistaken for runs on the same one (the source name, e.g. "default", stays the same).

    A local folder gets ``sha256:<12 hex>`` over each safetensors file's name and size, its header
    (the tensor table) and samples of its bytes: 4 KiB at the start, middle and end of every tensor
    and three 1 MiB samples of the file. A retrained or requantized model changes bytes everywhere,
    and an edit of any one tensor in place (scaled, replaced, zeroed) changes its sampled bytes; a
    13 GB 7B is fingerprinted in well under a second instead of a minute of hashing (an edit of a
    few bytes between samples is the price).
    Copies with the same bytes get the same revision wherever they sit. A hub id gives the commit
    of its locally cached snapshot. Anything else is ``"unknown"``; this never raises, because
    it labels results rather than loading anything.
    """
    try:
        resolved = resolve_source(source)
    except ModelSourceError:
        return UNKNOWN_REVISION
    path = Path(resolved)
    if path.is_dir():
        return _folder_revision(str(path), weight_files_stamp(path))
    return _hub_revision(resolved)


def weight_files_stamp(folder: Path) -> tuple:
    """(name, size, mtime) of each safetensors file of a model folder: changes with any write to them."""
    return tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(folder.glob("*.safetensors")))


def model_key(source: str) -> str:
    """A folder name for a model that changes when its weight files change (name + short fingerprint):
    the key of every cache derived from the weights (exports, artifacts, rankings, QAT runs)."""
    resolved = resolve_source(source)
    path = Path(resolved)
    stamp = resolved
    if path.is_dir():
        stamp += "".join(f"{name}:{size}:{mtime}" for name, size, mtime in weight_files_stamp(path))
    name = re.sub(r"[^\w.-]+", "_", path.name if path.is_dir() else resolved)
    return f"{name}-{hashlib.sha256(stamp.encode()).hexdigest()[:10]}"


@lru_cache(maxsize=64)
def _folder_revision(folder: str, files: tuple) -> str:
    digest = hashlib.sha256()
    for name, size, _mtime in files:  # the mtime only invalidates the cache; it is not hashed
        digest.update(f"{name}:{size}".encode())
        with open(Path(folder) / name, "rb") as handle:
            for offset, length in _revision_samples(handle, size):
                handle.seek(offset)
                digest.update(handle.read(length))
    return "sha256:" + digest.hexdigest()[:12]


def _revision_samples(handle, size: int) -> list[tuple[int, int]]:
    """(offset, length) spans of a safetensors file a revision hashes: its whole header (the tensor table:
    names, dtypes, shapes, offsets) and the start, middle and end of every tensor's bytes, plus three
    1 MiB samples of the file; a file that is not valid safetensors gets the three samples only."""
    spans = [(offset, _SAMPLE_BYTES) for offset in
             sorted({0, max(0, size // 2 - _SAMPLE_BYTES // 2), max(0, size - _SAMPLE_BYTES)})]
    head = handle.read(8)
    header_bytes = int.from_bytes(head, "little") if len(head) == 8 else 0
    if not 0 < header_bytes <= min(size - 8, 100 << 20):
        return spans
    spans.append((8, header_bytes))
    try:
        table = json.loads(handle.read(header_bytes))
    except ValueError:
        return spans
    base = 8 + header_bytes
    for info in table.values() if isinstance(table, dict) else ():
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            continue
        begin, end = base + offsets[0], base + offsets[1]
        chunk = min(_TENSOR_SAMPLE_BYTES, max(0, end - begin))
        spans += [(begin, chunk), ((begin + end - chunk) // 2, chunk), (end - chunk, chunk)]
    return spans


def _hub_revision(repo_id: str) -> str:

    cached = try_to_load_from_cache(repo_id, "config.json")
    if isinstance(cached, str) and "/snapshots/" in cached:
        return "hub:" + cached.split("/snapshots/")[1].split("/")[0][:12]
    return UNKNOWN_REVISION


REMOTE_CODE_FILES = ("config.json", "tokenizer_config.json", "generation_config.json", "processor_config.json",
                     "preprocessor_config.json")


def refuse_remote_code(folder: str | os.PathLike) -> None:
    """Raise ModelSourceError if ``folder``'s configs would have transformers (or llama.cpp's converter,
    which asks for remote code) import Python from the folder or the hub: an ``auto_map`` in any
    config, or a tokenizer class transformers does not ship."""

    folder = Path(folder)
    for name in REMOTE_CODE_FILES:
        path = folder / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError):
            raise ModelSourceError(f"{path} is not valid JSON; repair or re-save the model folder") from None
        if not isinstance(data, dict):
            raise ModelSourceError(f"{path} is not a JSON object; repair or re-save the model folder")
        if "auto_map" in data:
            raise ModelSourceError(f"{folder} ships its own code ({name} has auto_map); edgekit never runs a model "
                                   "folder's code: use a model transformers supports natively")
        cls = data.get("tokenizer_class")
        if cls is not None and (not isinstance(cls, str) or tokenizer_class_from_name(cls) is None
                                and tokenizer_class_from_name(cls.removesuffix("Fast")) is None):
            raise ModelSourceError(f"{folder} names tokenizer class {str(cls)[:60]!r}, which transformers does not "
                                   "ship; edgekit never runs a model folder's code: use a supported tokenizer")


def folder_tokenizer(folder: str | os.PathLike, trust_remote_code: bool = False):
    """``AutoTokenizer.from_pretrained(folder)`` with remote code off (a folder asking for it is refused)."""

    if not trust_remote_code and Path(folder).is_dir():
        refuse_remote_code(folder)
    try:
        return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
    except ValueError as exc:
        raise ModelSourceError(f"{folder}: {str(exc).splitlines()[0]}") from None


def model_config(source: str, trust_remote_code: bool = False):

    resolved = resolve_source(source)
    if not trust_remote_code and Path(resolved).is_dir():
        refuse_remote_code(resolved)
    try:
        config = AutoConfig.from_pretrained(resolved, trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise _hub_error(resolved, exc) from None
    except ValueError as exc:
        raise ModelSourceError(f"{resolved}: {exc}. If the model needs its own code, pass trust_remote_code=True "
                               "only if you trust its authors") from None
    if not any(a.endswith("ForCausalLM") for a in (config.architectures or [])):
        raise ModelSourceError(f"{resolved} is a {config.model_type!r} model without a causal-LM head "
                               f"(architectures: {config.architectures}); pick a causal language model")
    return config


def load_tokenizer(source: str, trust_remote_code: bool = False):

    resolved = resolve_source(source)
    try:
        tokenizer = folder_tokenizer(resolved, trust_remote_code)
    except OSError as exc:
        raise _hub_error(resolved, exc) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(source: str, *, trust_remote_code: bool = False, **from_pretrained_kwargs: Any):
    """``AutoModelForCausalLM.from_pretrained`` with edgekit's safety rules and errors.

    Extra keyword arguments (``dtype``, ``quantization_config``, ``device_map``,
    ``max_memory``...) pass straight to transformers.
    """

    config = model_config(source, trust_remote_code)
    resolved = resolve_source(source)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            resolved, config=config, trust_remote_code=trust_remote_code, use_safetensors=True,
            **from_pretrained_kwargs)
    except OSError as exc:
        raise _hub_error(resolved, exc) from None
    return model.eval()


def _hub_error(resolved: str, exc: Exception) -> ModelSourceError:
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    return ModelSourceError(
        f"could not load {resolved!r} from the Hugging Face hub"
        + (" (HF_HUB_OFFLINE=1 is set, so only the local cache is used)" if offline else "")
        + f": {str(exc).splitlines()[0]}. Check the id and your network, or download the model "
          "and pass its local folder")


def describe_model(source: str) -> dict:
    """Architecture facts read from config.json alone (no weights loaded)."""
    config = model_config(source)
    return {"source": resolve_source(source), "model_type": config.model_type,
            "hidden_size": getattr(config, "hidden_size", None),
            "layers": getattr(config, "num_hidden_layers", None),
            "vocab_size": config.vocab_size,
            "config": json.loads(config.to_json_string())}


def model_summary(model, source: str) -> dict:
    """Size facts of a loaded model: parameters, bytes in memory and on disk, shape."""


    config = model.config
    folder = Path(resolve_source(source))
    disk = sum(p.stat().st_size for p in folder.glob("*.safetensors")) if folder.is_dir() else None
    return {"parameters": sum(p.numel() for p in model.parameters()), "weight_bytes": module_weight_bytes(model),
            "safetensors_bytes_on_disk": disk, "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
            "layers": config.num_hidden_layers, "hidden_size": config.hidden_size,
            "attention_heads": config.num_attention_heads,
            "kv_heads": getattr(config, "num_key_value_heads", config.num_attention_heads),
            "vocab_size": config.vocab_size}
