"""The Runner: one interface for every loaded thing, PyTorch, ONNX Runtime or another runtime.

Every metric in :mod:`edgekit.measure.quality` is written once against this interface, so a
PyTorch model and a compiled ONNX artifact are measured by the same code and land in the
same table. A runner offers three things:

- ``logits(input_ids)``: next-token logits for a batch of token ids (float32, on the CPU),
- ``generate_stream(input_ids, max_new_tokens, pick=None)``: decoding with a KV cache that
  yields each new token id as soon as it exists (so latency is timed from outside, the
  same way for every runtime); greedy, or each token chosen by ``pick`` (a sampler) from the
  last position's logits, so sampling costs one forward pass per token as greedy does,
- ``weight_bytes()``: the bytes its weights occupy (packed weights plus their scales).
"""
from __future__ import annotations

from collections import Counter
from typing import Iterator, Protocol, runtime_checkable

import torch
from transformers import DynamicCache, StaticCache

from edgekit.core.errors import InputError
from edgekit.models.sampling import Pick, choose, choose_rows


@runtime_checkable
class Runner(Protocol):
    name: str
    tokenizer: object

    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[batch, seq] int64 -> [batch, seq, vocab] float32 logits on the CPU."""

    def generate_stream(self, input_ids: torch.Tensor, max_new_tokens: int, pick: Pick | None = None) -> Iterator[int]:
        """Decoding of one prompt ([1, seq] int64), greedy or by ``pick``; yields each new token id."""

    def weight_bytes(self) -> int:
        """Bytes of the weights as held in memory (quantized data, scales and zeros)."""

    def close(self) -> None:
        """Release the model's memory."""


def _tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def module_weight_bytes(model: torch.nn.Module) -> int:
    """Parameters and buffers, counting bitsandbytes 4-bit quantization state (absmax, code).

    Shared tensors (tied embeddings) count once. Non-persistent buffers such as rotary
    frequency tables are left out: they are not weights.
    """
    seen: set[int] = set()
    total = 0
    persistent = set(model.state_dict(keep_vars=True).keys())
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if name not in persistent or t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += _tensor_bytes(t)
        quant_state = getattr(t, "quant_state", None)
        if quant_state is not None:  # bitsandbytes Params4bit: absmax (+ nested state2)
            total += _tensor_bytes(quant_state.absmax)
            if getattr(quant_state, "state2", None) is not None:
                total += _tensor_bytes(quant_state.state2.absmax) + _tensor_bytes(quant_state.state2.code)
    for module in model.modules():  # bitsandbytes LLM.int8 row scales: on the weight, or on the
        state = getattr(module, "state", None)  # module's state once the first forward moved them
        weight = getattr(module, "weight", None)
        for scb in (getattr(weight, "SCB", None), getattr(state, "SCB", None)):
            if isinstance(scb, torch.Tensor) and scb.data_ptr() not in seen:
                seen.add(scb.data_ptr())
                total += _tensor_bytes(scb)
    return total


class TorchRunner:
    """A transformers causal LM (any dtype or quantization) behind the Runner interface."""

    def __init__(self, name: str, model: torch.nn.Module, tokenizer) -> None:
        self.name = name
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self._decode_step = None  # set by compile_decoding
        self._static_cache = None

    def compile_decoding(self, cache_tokens: int = 1024) -> None:
        """Decode as gpt-fast does (the ``compile=true`` option): a static KV cache of ``cache_tokens``
        positions (more if a generation asks) and the one-token forward step compiled once with
        ``torch.compile`` (CUDA graphs on a GPU, ``mode="reduce-overhead"``), so every decoded token
        replays the same graph. The prompt runs eagerly; the first decode step pays the compilation,
        which the steady-state warm-up of :func:`edgekit.measure.latency.measure_latency` leaves out."""
        def step(ids: torch.Tensor, position: torch.Tensor, cache) -> torch.Tensor:
            out = self.model(input_ids=ids, past_key_values=cache, cache_position=position, use_cache=True)
            return out.logits[:, -1].argmax(-1)

        mode = "reduce-overhead" if self.device.type == "cuda" else None
        self._decode_step = torch.compile(step, mode=mode, fullgraph=True, dynamic=False)
        self._cache_tokens = cache_tokens

    def _static_cache_for(self, tokens: int):
        """The runner's one static cache, emptied; re-made (and so recompiled) only when ``tokens`` outgrow it."""

        if self._static_cache is None or tokens > self._cache_tokens:
            self._cache_tokens = max(self._cache_tokens, tokens)
            self._static_cache = StaticCache(config=self.model.config, max_cache_len=self._cache_tokens)
        else:
            self._static_cache.reset()
        return self._static_cache

    @torch.inference_mode()
    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=input_ids.to(self.device), use_cache=False)
        return out.logits.float().cpu()

    @torch.inference_mode()
    def generate_stream(self, input_ids: torch.Tensor, max_new_tokens: int, pick: Pick | None = None) -> Iterator[int]:
        if self._decode_step is not None and pick is None:
            yield from self._generate_compiled(input_ids, max_new_tokens)
            return

        cache = DynamicCache()
        ids = input_ids.to(self.device)
        for _ in range(max_new_tokens):
            out = self.model(input_ids=ids, past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            token = choose(out.logits[0, -1], pick)  # .item() synchronises CUDA
            yield token
            ids = torch.tensor([[token]], device=self.device)

    @torch.inference_mode()
    def _generate_compiled(self, input_ids: torch.Tensor, max_new_tokens: int) -> Iterator[int]:
        """Greedy decoding on the static cache: the prompt eagerly, then the compiled one-token step."""
        if max_new_tokens < 1:
            return
        ids = input_ids.to(self.device)
        length = ids.shape[1]
        cache = self._static_cache_for(length + max_new_tokens)
        out = self.model(input_ids=ids, past_key_values=cache, use_cache=True,
                         cache_position=torch.arange(length, device=self.device))
        token = out.logits[:, -1].argmax(-1)
        for i in range(max_new_tokens):
            yield int(token)  # .item() synchronises CUDA
            if i + 1 < max_new_tokens:
                position = torch.tensor([length + i], device=self.device)
                token = self._decode_step(token.view(1, 1), position, cache).clone()

    @torch.inference_mode()
    def generate_batch(self, prompts: list[torch.Tensor], max_new_tokens: int,
                       picks: list[Pick | None] | None = None) -> list[list[int]]:
        """Decoding of several prompts at once (1-D or [1, seq] each): left-padded, masked,
        positions counted from each prompt's first real token, so each row decodes as it would alone;
        row ``i`` greedy or chosen by ``picks[i]``."""

        rows = [p.reshape(-1) for p in prompts]
        width = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r):], mask[i, width - len(r):] = r, 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        cache, out_tokens = DynamicCache(), []
        for _ in range(max_new_tokens):
            positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -ids.shape[1]:]
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                             use_cache=True, logits_to_keep=1)
            cache = out.past_key_values
            last = out.logits[:, -1]
            ids = (torch.from_numpy(choose_rows(last, picks))[:, None].to(self.device) if picks and any(picks)
                   else last.argmax(-1, keepdim=True))
            out_tokens.append(ids.cpu())
            mask = torch.cat([mask, torch.ones_like(ids)], dim=1)
        return torch.cat(out_tokens, dim=1).tolist() if out_tokens else [[] for _ in rows]

    def weight_bytes(self) -> int:
        return module_weight_bytes(self.model)

    @property
    def compute_path(self) -> str:
        """How the linear layers multiply, with their counts: "int4 kernel (aten._weight_int4pack_mm_for_cpu) x42,
        Linear x1", "dequantize x42, ...", "Linear4bit x42, ..." (bitsandbytes) or "Linear x43" (dense). A layer
        that says how it computes (a ``compute_path`` string: packed RTN, kquant) is counted by it, any other
        linear by its class."""
        counts = Counter(m.compute_path if isinstance(getattr(m, "compute_path", None), str) else type(m).__name__
                         for m in self.model.modules()
                         if isinstance(m, torch.nn.Linear) or isinstance(getattr(m, "compute_path", None), str))
        return ", ".join(f"{path} x{n}" for path, n in counts.most_common())

    def close(self) -> None:
        self.model = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def generate_text(runner: Runner, prompt: str, max_new_tokens: int = 40) -> str:
    """Greedy continuation of ``prompt`` as text, through any Runner."""
    ids = runner.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    if ids.shape[1] == 0:
        raise InputError("the prompt is empty; give some text to continue")
    tokens = list(runner.generate_stream(ids, max_new_tokens))
    return runner.tokenizer.decode(tokens, skip_special_tokens=True)
