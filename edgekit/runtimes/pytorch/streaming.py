"""Layer streaming with prefetch: run a model whose weights exceed the memory budget.

Big-model inference as accelerate describes it ("Handling big models for inference":
``device_map`` with ``"disk"`` offload) keeps the layers that do not fit off the compute
device and brings each one in just before it runs. Accelerate loads synchronously, so the
compute waits for every layer. This module adds the double buffering of FlexGen (Sheng et
al., 2023, "overlap I/O with compute") and DeepSpeed ZeRO-Inference's layer prefetch:
while layer *i* computes, layer *i+1* is already being read on a side thread (on CUDA: copied
from pinned host memory on a side stream), so at most two streamed layers are resident.

Where the weights wait:
- CPU compute: on disk, in the checkpoint's own safetensors files. Each load opens the
  file memory-mapped, copies the layer's tensors out and closes the mapping, so the bytes
  are not counted in the process's resident set once the layer is dropped.
- CUDA compute: in pinned host memory, copied with ``non_blocking`` on a side stream; the
  compute stream waits on an event, not on the host.

Which modules stay resident and which stream comes from an offload map (module name ->
``"cpu"``/``"cuda:0"``/``"disk"``, accelerate's ``device_map`` format), the layer-wise plan
:func:`edgekit.memory.plan.plan_memory` makes; :func:`stream_device_map` asks for one with the
budget left after the two in-flight layer buffers.

Every forward pass (one prefill or one decoded token) records its wall time, the time the
compute spent waiting for weights (stall) and the bytes streamed, in ``runner.steps``.
"""
from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from accelerate import init_empty_weights
from safetensors import safe_open
from transformers import AutoModelForCausalLM, DynamicCache

from edgekit.core.errors import InputError, ModelSourceError
from edgekit.memory.bytes import module_bytes
from edgekit.memory.plan import plan_memory
from edgekit.memory.profiles import DeviceProfile
from edgekit.models.checkpoint import index_weight_map
from edgekit.models.config import load_config
from edgekit.models.layout import block_index, decoder_blocks
from edgekit.models.load import load_tokenizer, model_config, resolve_source
from edgekit.models.sampling import Pick, choose


@dataclass
class StepTiming:
    """One forward pass: its wall time, the part spent waiting for weights, bytes streamed."""

    wall_s: float
    stall_s: float
    streamed_bytes: int

    @property
    def compute_s(self) -> float:
        return self.wall_s - self.stall_s


def _weight_files(folder: Path) -> dict[str, Path]:
    """Tensor name -> safetensors file holding it (sharded or single-file checkpoints)."""
    weight_map = index_weight_map(folder)
    if weight_map is not None:
        return weight_map
    single = folder / "model.safetensors"
    if not single.exists():
        raise ModelSourceError(f"{folder} has no safetensors weights; layer streaming reads safetensors only "
                               "(convert the checkpoint with `save_pretrained(safe_serialization=True)`)")

    with safe_open(single, "pt") as f:
        return {k: single for k in f.keys()}


def _skeleton(folder: Path, dtype: torch.dtype):
    """The model with every parameter on the meta device (no memory), buffers real (rotary tables)."""


    config = model_config(str(folder))
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def stream_device_map(source: str, budget_bytes: int, dtype: torch.dtype = torch.bfloat16,
                      context: int = 256) -> dict[str, str]:
    """The memory plan's offload map under ``budget_bytes`` of host memory: layers that fit stay on ``"cpu"``, the
    rest ``"disk"``.

    :func:`edgekit.memory.plan.plan_memory` places modules in load order under the budget left after
    the KV cache and activations for ``context`` tokens. Two streamed layers are in memory at
    once (the one computing and the one prefetched) and the final norm and head always stay
    resident, so their bytes are taken off the budget before the plan is made.
    """

    variant = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}[dtype]
    folder = resolve_source(source)
    sizes = module_bytes(load_config(folder), variant)
    layers = [m for m in sizes if block_index(m) is not None]
    last_layer = list(sizes).index(layers[-1])
    tail = sum(size for m, size in list(sizes.items())[last_layer + 1:])   # final norm and head
    reserved = 2 * max(sizes[m] for m in layers) + tail
    if budget_bytes - reserved < sizes.get("model.embed_tokens", 0):
        raise InputError(f"a budget of {budget_bytes / 2**30:.2f} GiB cannot hold the embeddings and head plus two "
                         f"streamed layers ({(reserved + sizes.get('model.embed_tokens', 0)) / 2**30:.2f} GiB); "
                         "raise the budget")
    profile = DeviceProfile("streaming budget", "cpu", budget_bytes - reserved, runtime_overhead_bytes=0)
    plan = plan_memory(folder, variant, context=context, batch=1, device=profile)
    placed = plan.offload["device_map"]
    return {m: ("disk" if m in layers and _placement(placed, m) == "disk" else "cpu") for m in sizes}


class StreamingRunner:
    """A safetensors causal LM behind the Runner interface, decoder layers streamed per an offload map.

    ``device_map`` maps module names to a device or ``"disk"`` (accelerate's format, as
    :func:`stream_device_map` or the memory plan makes it); decoder layers marked
    ``"disk"`` are streamed, everything else (including embeddings and head, whatever the
    map says) is loaded once onto the compute device.
    ``prefetch=False`` loads each layer only when it is needed (the baseline that shows
    what prefetching hides).
    """

    def __init__(self, source: str, device_map: dict[str, str], tokenizer=None, *, prefetch: bool = True,
                 device: str = "cpu", dtype: torch.dtype | None = None, name: str | None = None) -> None:

        self.folder = Path(resolve_source(source))
        self.tokenizer = tokenizer or load_tokenizer(str(self.folder))
        self.device = torch.device(device)
        self.prefetch = prefetch
        self.files = _weight_files(self.folder)
        if dtype is None:
            dtype = self._checkpoint_dtype()
        self.dtype = dtype
        self.model = _skeleton(self.folder, dtype)
        blocks = decoder_blocks(self.model)
        layers = list(blocks.values())
        prefix_of = dict(enumerate(blocks))
        self.prefix_of = prefix_of
        self.streamed = [i for i, p in prefix_of.items() if _placement(device_map, p) == "disk"]
        if not self.streamed:
            raise InputError("the offload map streams no decoder layer (none is on 'disk'); "
                             "lower the budget or use an ordinary runner")
        self.name = name or f"streamed-{len(self.streamed)}of{len(layers)}" + ("" if prefetch else "-noprefetch")
        streamed_names = {n for n in self.files if any(n.startswith(prefix_of[i] + ".") for i in self.streamed)}
        self._load_resident([n for n in self.files if n not in streamed_names])
        self._layer_tensors = {i: sorted(n for n in streamed_names if n.startswith(prefix_of[i] + "."))
                               for i in self.streamed}
        self._pinned = self._pin_layers() if self.device.type == "cuda" else None
        self._copy_stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgekit-prefetch")
        self._pending: dict[int, Future] = {}
        self.steps: list[StepTiming] = []
        self._stall = 0.0
        self._bytes = 0
        for i in self.streamed:
            layers[i].register_forward_pre_hook(self._bring_in(i))
            layers[i].register_forward_hook(self._drop(i))

    # -------------------------------------------------------------- loading
    def _checkpoint_dtype(self) -> torch.dtype:

        name = next((n for n in self.files if "norm" in n), next(iter(self.files)))  # a small tensor
        with safe_open(self.files[name], "pt") as f:
            return f.get_tensor(name).dtype

    def _load_resident(self, names: list[str]) -> None:
        for name, tensor in self._read(names).items():
            _assign(self.model, name, tensor.to(self.device, self.dtype))
        for name, param in self.model.named_parameters():
            if param.is_meta and not name.startswith(tuple(f"{self.prefix_of[i]}." for i in self.streamed)):
                raise ModelSourceError(f"{self.folder} lacks the weight {name}; the checkpoint is incomplete")

    def _read(self, names: list[str]) -> dict[str, torch.Tensor]:
        """Copy ``names`` out of their safetensors files (memory-mapped while reading, then unmapped)."""

        by_file: dict[Path, list[str]] = {}
        for n in names:
            by_file.setdefault(self.files[n], []).append(n)
        out = {}
        for path, keys in by_file.items():
            with safe_open(path, "pt") as f:
                for k in keys:
                    out[k] = f.get_tensor(k).clone()  # get_tensor maps lazily; the copy is the actual read
        return out

    def _pin_layers(self) -> dict[int, dict[str, torch.Tensor]]:
        return {i: {n: t.pin_memory() for n, t in self._read(self._layer_tensors[i]).items()} for i in self.streamed}

    def _fetch(self, i: int):
        """Runs on the side thread: layer ``i``'s tensors, ready for the compute device."""
        if self._pinned is None:
            return self._read(self._layer_tensors[i]), None
        with torch.cuda.stream(self._copy_stream):
            tensors = {n: t.to(self.device, non_blocking=True) for n, t in self._pinned[i].items()}
            done = torch.cuda.Event()
            done.record(self._copy_stream)
        return tensors, done

    def _start(self, i: int) -> None:
        if i not in self._pending:
            self._pending[i] = self._pool.submit(self._fetch, i)

    def _next_streamed(self, i: int) -> int:
        k = self.streamed.index(i)
        return self.streamed[(k + 1) % len(self.streamed)]  # after the last, the next token's first

    # -------------------------------------------------------------- hooks
    def _bring_in(self, i: int):
        def hook(module, args):
            t0 = time.perf_counter()
            self._start(i)
            tensors, done = self._pending.pop(i).result()
            if done is not None:  # CUDA: the compute stream waits for the copy, and owns the copied tensors
                compute_stream = torch.cuda.current_stream(self.device)
                compute_stream.wait_event(done)
                for tensor in tensors.values():
                    tensor.record_stream(compute_stream)
            self._stall += time.perf_counter() - t0
            prefix = f"{self.prefix_of[i]}."
            for name, tensor in tensors.items():
                _assign(module, name[len(prefix):], tensor.to(dtype=self.dtype))
                self._bytes += tensor.numel() * tensor.element_size()
            if self.prefetch:
                self._start(self._next_streamed(i))
        return hook

    def _drop(self, i: int):
        def hook(module, args, output):
            prefix = f"{self.prefix_of[i]}."
            for name in self._layer_tensors[i]:
                _assign(module, name[len(prefix):], None)
        return hook

    # -------------------------------------------------------------- Runner
    def _forward(self, **kwargs):
        self._stall, self._bytes = 0.0, 0
        t0 = time.perf_counter()
        out = self.model(**kwargs)
        logits = out.logits
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.steps.append(StepTiming(time.perf_counter() - t0, self._stall, self._bytes))
        return out, logits

    @torch.inference_mode()
    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        _, logits = self._forward(input_ids=input_ids.to(self.device), use_cache=False)
        return logits.float().cpu()

    @torch.inference_mode()
    def generate_stream(self, input_ids: torch.Tensor, max_new_tokens: int, pick: Pick | None = None) -> Iterator[int]:

        cache = DynamicCache()
        ids = input_ids.to(self.device)
        for _ in range(max_new_tokens):
            out, logits = self._forward(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
            cache = out.past_key_values
            token = choose(logits[0, -1], pick)
            yield token
            ids = torch.tensor([[token]], device=self.device)

    def weight_bytes(self) -> int:
        """All weights, streamed ones included (what the model holds, not what is resident)."""
        return sum(t.numel() * t.element_size() for t in self.model.state_dict().values() if not t.is_meta) + \
            self.streamed_bytes()

    def streamed_bytes(self) -> int:

        total = 0
        for i in self.streamed:
            for name in self._layer_tensors[i]:
                with safe_open(self.files[name], "pt") as f:
                    sl = f.get_slice(name)
                    numel = 1
                    for d in sl.get_shape():
                        numel *= d
                total += numel * self.dtype.itemsize
        return total

    def close(self) -> None:
        for future in self._pending.values():
            future.cancel()
        self._pool.shutdown(wait=True)
        self._pending.clear()
        self.model = None
        self._pinned = None


def _placement(device_map: dict[str, str], module: str) -> str | None:
    """The device of ``module`` under an accelerate map: its own entry or its closest listed parent."""
    parts = module.split(".")
    for k in range(len(parts), -1, -1):
        key = ".".join(parts[:k])
        if key in device_map:
            return str(device_map[key])
    return None


def _assign(root: torch.nn.Module, name: str, tensor: torch.Tensor | None) -> None:
    """Point parameter ``name`` of ``root`` at ``tensor`` (None: an empty meta tensor, freeing the memory)."""
    *path, leaf = name.split(".")
    module = root
    for part in path:
        module = getattr(module, part)
    old = module._parameters.get(leaf)
    if old is None and leaf in module._buffers:
        module._buffers[leaf] = tensor
        return
    if tensor is None:
        tensor = torch.empty(old.shape, dtype=old.dtype, device="meta")
    module._parameters[leaf] = torch.nn.Parameter(tensor, requires_grad=False)


def stream_summary(steps: list[StepTiming], new_tokens: int) -> dict:
    """Decode figures from the per-step timings of one generation (the first step is the prefill)."""
    decode = steps[-(new_tokens - 1):] if new_tokens > 1 else []
    wall = sum(s.wall_s for s in decode)
    stall = sum(s.stall_s for s in decode)
    return {"prefill_s": steps[-new_tokens].wall_s,
            "decode_tokens_per_s": len(decode) / wall if wall else float("nan"),
            "decode_s_per_token": wall / len(decode) if decode else float("nan"),
            "stall_s_per_token": stall / len(decode) if decode else float("nan"),
            "compute_s_per_token": (wall - stall) / len(decode) if decode else float("nan"),
            "stall_fraction": stall / wall if wall else float("nan"),
            "streamed_bytes_per_token": sum(s.streamed_bytes for s in decode) / len(decode) if decode else 0}
