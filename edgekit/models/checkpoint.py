"""Reading a checkpoint tensor by tensor: shards, memory-mapped reads, and a model built as it is read.

Follows the accelerate "Big model inference" recipe: build the model on the ``meta`` device (no memory),
let the caller swap the layers it quantizes while loading, then walk the safetensors shards one at a time
and, for each tensor, either hand it to the caller's ``on_weight`` (which quantizes it into its layer) or
place it as is with ``accelerate.utils.set_module_tensor_to_device``. At any moment the process holds the
model built so far plus one full-precision tensor (freed heap is handed back to the OS after each one),
and the pages of the shard being read (file-backed, released when the shard is closed; unquantized tensors
are copied out so no view pins a shard). ``from_pretrained`` with a bitsandbytes config on a CPU
materializes the checkpoint before it quantizes (a 7B bf16 checkpoint peaked at 18.1 GB RSS here for a
3.8 GB result); :mod:`edgekit.quantizers.bitsandbytes` and :mod:`edgekit.quantizers.packed` load through
here instead, as do the layer-by-layer calibration and the streamed ONNX builder.
"""
from __future__ import annotations

import ctypes
import json
from pathlib import Path

import torch
from accelerate import init_empty_weights
from accelerate.utils import set_module_tensor_to_device
from huggingface_hub import snapshot_download
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from edgekit.core.dtypes import DTYPES, config_dtype
from edgekit.core.errors import ModelSourceError
from edgekit.core.progress import tqdm
from edgekit.models.load import model_config, resolve_source


def index_weight_map(folder: Path) -> dict[str, Path] | None:
    """Tensor name -> shard of ``model.safetensors.index.json`` (None without an index); a shard name
    that is not a plain relative path inside the folder is refused."""
    index = folder / "model.safetensors.index.json"
    if not index.exists():
        return None
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (ValueError, KeyError, TypeError):
        raise ModelSourceError(f"{index} is not a safetensors index with a weight_map; re-save the model") from None
    if not isinstance(weight_map, dict):
        raise ModelSourceError(f"{index}: weight_map is not an object; re-save the model")
    for shard in set(weight_map.values()):
        if (not isinstance(shard, str) or not shard.endswith(".safetensors") or "\\" in shard
                or Path(shard).is_absolute() or any(part in ("", ".", "..") for part in shard.split("/"))):
            raise ModelSourceError(f"{index} names shard {str(shard)[:80]!r}, which is not a .safetensors file "
                                   "inside the model folder; re-save the model")
    return {name: folder / shard for name, shard in weight_map.items()}


def checkpoint_shards(folder: str | Path) -> list[Path]:
    """The safetensors files of a local model folder, in index order."""
    folder = Path(folder)
    weight_map = index_weight_map(folder)
    if weight_map is not None:
        return list(dict.fromkeys(weight_map.values()))
    shards = sorted(folder.glob("*.safetensors"))
    if not shards:
        raise ModelSourceError(f"{folder} has no .safetensors weights to load")
    return shards


def meta_model(source: str, dtype: torch.dtype | None = None):
    """(folder, config, the model on the meta device, the dtype the rest of it is held in)."""
    folder = Path(resolve_source(source))
    if not folder.is_dir():  # a hub id: its files, as from_pretrained would fetch them (or find them cached)
        folder = Path(_hub_snapshot(str(source)))
    config = model_config(str(folder))
    dtype = dtype or DTYPES[config_dtype(config)]
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return folder, config, model, dtype


def _hub_snapshot(repo_id: str) -> str:
    """The local folder of a hub model's config, tokenizer and safetensors shards (downloaded once, then cached)."""

    try:
        return snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.model"])
    except Exception as exc:  # offline and not cached, no such repo, gated...
        raise ModelSourceError(f"quantize-on-load could not fetch {repo_id!r} ({str(exc).splitlines()[0]}); "
                               "download it and pass its local folder") from None


def tensor_shards(folder: str | Path) -> dict[str, Path]:
    """Which shard holds each tensor of a local model folder (read from the shards' headers only)."""
    locations: dict[str, Path] = {}
    for shard in checkpoint_shards(folder):
        with safe_open(str(shard), framework="pt", device="cpu") as tensors:
            locations.update(dict.fromkeys(tensors.keys(), shard))
    return locations


def read_tensor(shard: Path, key: str) -> torch.Tensor:
    """One tensor of a shard, through a mapping of its own: a shard kept mapped while many of its tensors are
    read keeps every page they touched resident (1.6 GB of a 7B's shard counted in RSS); this one is unmapped
    as soon as the tensor it returns is released."""
    with safe_open(str(shard), framework="pt", device="cpu") as tensors:
        return tensors.get_tensor(key)


def place_tensors(model, keys: list[str], locations: dict[str, Path], dtype: torch.dtype, device: str) -> None:
    """Read ``keys`` from their memory-mapped shards into ``model`` (meta parameters become real ones), each
    copied out at ``dtype`` so no view pins a shard: the reader of anything that loads part of a model at a time."""
    by_shard: dict[Path, list[str]] = {}
    for key in keys:
        by_shard.setdefault(locations[key], []).append(key)
    for shard, names in by_shard.items():
        with safe_open(str(shard), framework="pt", device="cpu") as tensors:
            for key in names:
                value = tensors.get_tensor(key)
                set_module_tensor_to_device(model, key, device, value=value.to(dtype, copy=True))
                del value
                return_freed_heap()


def stream_into(model, folder: Path, config, dtype: torch.dtype, targets: set[str], on_weight, device: str,
                 desc: str):
    """Read every tensor of the shards once: ``on_weight(module, tensor, bias)`` for the weights of
    ``targets`` (their biases are read first where the checkpoint orders them so), the rest placed as is."""
    biases: dict[str, torch.Tensor] = {}  # of target layers whose weight has not been read yet
    done: set[str] = set()
    for shard in tqdm(checkpoint_shards(folder), desc=desc, unit="shard"):
        with safe_open(str(shard), framework="pt", device="cpu") as tensors:
            keys = list(tensors.keys())
        for key in keys:
            value = read_tensor(shard, key)
            module_name, _, param = key.rpartition(".")
            if module_name in targets and param == "weight":
                on_weight(module_name, value, biases.pop(module_name, None))
                done.add(module_name)
            elif module_name in targets and param == "bias" and module_name not in done:
                biases[module_name] = value.to(dtype, copy=True)
            else:  # a copy: a view would keep the whole memory-mapped shard resident
                set_module_tensor_to_device(model, key, device, value=value.to(dtype, copy=True))
            del value
            return_freed_heap()
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    missing = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if missing:
        raise ModelSourceError(f"{folder} lacks weights for {missing[:3]}...; the checkpoint does not match its "
                               f"config.json")
    return model.eval()


def return_freed_heap() -> None:
    """Hand freed heap pages back to the OS (glibc ``malloc_trim``) after each tensor: glibc
    keeps freed large blocks for reuse, so without this the full-precision tensors already
    quantized would still count in RSS, shard after shard."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc: nothing to hand back this way
        pass


