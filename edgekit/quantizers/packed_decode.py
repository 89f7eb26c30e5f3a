"""A lean decoder for packed int4 llama-family models on the CPU: ``compile=true`` decoding without the overhead.

Profiled on SmolLM2-135M (int4-g32, 2 threads), a token through transformers' forward costs about 29 ms
eagerly and 31 ms compiled (its static cache makes every step attend over the whole cache), of which the
int4 kernels are about 8 ms: the rest is per-op dispatch around 210 small kernel calls, a fp32 head, and
attention. This module runs the same weights with less around them:

- **fused projections**: q/k/v and gate/up each become one int4 kernel call (120 calls a token instead
  of 210). The CPU kernel lays a weight out as [out, in/2] bytes in blocks of rows, so the fused codes
  are the parts' codes stacked, and the model's own layers keep views into them (no second copy of the
  codes; the fused bf16 scale/zero, a quarter of the codes' size, is the only extra memory, counted by
  :attr:`FusedDecoder.extra_bytes`);
- **attention as fused arithmetic** on a cache of ``capacity`` positions, masked past the current one,
  so ``torch.compile`` turns each layer's attention into one C++ loop instead of batched-matmul calls;
- the one-token step compiled once (``fullgraph``, static shapes), the prompt run eagerly through the same
  code with matmul attention.

Norms, activation, embedding and head are the model's own modules, so a variant's int8 table
(``embed=8``) and a bf16 rest run as they do in transformers. :func:`fusion_refusal` says why a model
cannot take this path (another architecture, a bias, a layer off the int4 kernel); it then decodes as
every other PyTorch model does (:meth:`edgekit.models.runner.TorchRunner.compile_decoding`).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

FAMILIES = ("llama", "mistral", "qwen2")  # decoder layers of one shape: pre-norm, q/k/v/o, gated MLP, RoPE
FUSED = {"qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
         "gate_up": ("mlp.gate_proj", "mlp.up_proj")}
SINGLE = {"o": "self_attn.o_proj", "down": "mlp.down_proj"}


def fusion_refusal(model: nn.Module, kernel: str, block_rows: int | None) -> str | None:
    """Why ``model`` cannot decode on :class:`FusedDecoder` (None when it can). ``kernel``: the CPU int4
    kernel's name, which every projection must run on; ``block_rows``: rows a block of its layout."""
    config = model.config
    if config.model_type not in FAMILIES:
        return f"a {config.model_type} decoder (the fused decoder runs {', '.join(FAMILIES)})"
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return "a sliding attention window"
    if block_rows is None:
        return "a CPU whose int4 kernel layout is not known here"
    for layer in model.model.layers:
        for name in [*SINGLE.values(), *(n for names in FUSED.values() for n in names)]:
            linear = layer.get_submodule(name)
            if getattr(linear, "kernel", None) != kernel or linear.bias is not None:
                return f"{name} is not a bias-free layer on {kernel}"
            if name not in SINGLE.values() and linear.out_features % block_rows:
                return f"{name} has {linear.out_features} outputs, not whole blocks of {block_rows} rows to fuse"
    return None


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, -1)
    return torch.cat([-second, first], -1)


class _FusedLayer(nn.Module):
    """One decoder layer's fused weights; the layer's own norms and activation (not registered here:
    they stay the model's)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.norms = (layer.input_layernorm, layer.post_attention_layernorm)
        self.act = layer.mlp.act_fn
        for key, names in FUSED.items():
            parts = [layer.get_submodule(n) for n in names]
            codes = torch.cat([p.qweight for p in parts])
            start = 0
            for part in parts:  # the model's layers now read their rows of the fused codes
                part.qweight = codes[start:start + part.out_features]
                start += part.out_features
            self.register_buffer(f"{key}_codes", codes)
            self.register_buffer(f"{key}_scale_zero", torch.cat([p.scale_zero for p in parts], 1).contiguous())
        self.o, self.down = layer.self_attn.o_proj, layer.mlp.down_proj
        self.group_size = self.o.group_size


class FusedDecoder(nn.Module):
    """Greedy decoding of a packed int4 llama-family model on a KV cache of :attr:`capacity` positions.

    :meth:`prefill` runs a prompt eagerly and returns the next token; :meth:`step` (compiled by
    :meth:`compile`) takes one token at a position and returns the next. Both give the tokens the
    transformers forward gives for the same weights (tested on the default model).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        config = model.config
        self.model = model  # its embedding, norms, rotary table and head are used as they are
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.layers = [_FusedLayer(layer) for layer in model.model.layers]
        self.dtype = model.get_input_embeddings()(torch.zeros(1, dtype=torch.long)).dtype
        self.capacity = 0
        self._compiled = None

    @property
    def extra_bytes(self) -> int:
        """Memory held beyond the model's own weights: the fused scale/zero tensors."""
        return sum(t.numel() * t.element_size() for layer in self.layers
                   for key in FUSED for t in [getattr(layer, f"{key}_scale_zero")])

    def reset(self, capacity: int) -> None:
        """An empty cache of at least ``capacity`` positions (re-made, and so re-compiled, only when it grows)."""
        if capacity > self.capacity:
            shape = (self.kv_heads, capacity, self.head_dim)
            self.keys = [torch.zeros(shape, dtype=self.dtype) for _ in self.layers]
            self.values = [torch.zeros(shape, dtype=self.dtype) for _ in self.layers]
            positions = torch.arange(capacity)
            cos, sin = self.model.model.rotary_emb(self.keys[0], positions[None])
            self.cos, self.sin, self.positions = cos[0].to(self.dtype), sin[0].to(self.dtype), positions
            self.capacity, self._compiled = capacity, None

    def compile(self) -> None:
        """Compile :meth:`step` for this capacity (the first call pays the compilation)."""
        self._compiled = torch.compile(self._step, fullgraph=True, dynamic=False)

    def _mm(self, x: torch.Tensor, codes: torch.Tensor, scale_zero: torch.Tensor, layer: _FusedLayer) -> torch.Tensor:
        x2 = x.to(torch.bfloat16)
        padded_in = 2 * codes.shape[1]  # [out, in/2] bytes, the width padded to whole groups
        if padded_in != x2.shape[-1]:  # a ragged last group: zero activations meet its padding
            x2 = F.pad(x2, (0, padded_in - x2.shape[-1]))
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x2, codes, layer.group_size, scale_zero).to(self.dtype)

    def _layer(self, i: int, h: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """h [tokens, hidden] at ``positions`` -> the layer's output; writes the cache at ``positions``."""
        layer, tokens = self.layers[i], h.shape[0]
        heads, kv, d = self.heads, self.kv_heads, self.head_dim
        qkv = self._mm(layer.norms[0](h), layer.qkv_codes, layer.qkv_scale_zero, layer).view(tokens, heads + 2 * kv, d)
        cos, sin = self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)
        qk = qkv[:, : heads + kv] * cos + _rotate_half(qkv[:, : heads + kv]) * sin
        self.keys[i].index_copy_(1, positions, qk[:, heads:].transpose(0, 1))
        self.values[i].index_copy_(1, positions, qkv[:, heads + kv:].transpose(0, 1))
        visible = self.positions[None, :] <= positions[:, None]  # [tokens, capacity]
        q = qk[:, :heads].transpose(0, 1).reshape(kv, heads // kv, tokens, d).float()
        keys, values = self.keys[i].float(), self.values[i].float()
        if tokens == 1:  # decoding: elementwise products and sums that compile to one loop
            scores = (q * keys[:, None]).sum(-1) * d ** -0.5  # [kv, group, capacity]
            scores = scores.masked_fill(~visible, float("-inf"))
            out = (scores.softmax(-1).unsqueeze(-1) * values[:, None]).sum(-2)  # [kv, group, d]
        else:  # a prompt: matmul attention
            shape = (kv, heads // kv, *keys.shape[1:])
            out = F.scaled_dot_product_attention(q, keys[:, None].expand(shape), values[:, None].expand(shape),
                                                 attn_mask=visible)
        out = out.reshape(heads, tokens, d).transpose(0, 1).reshape(tokens, heads * d).to(self.dtype)
        h = h + self._mm(out, layer.o.qweight, layer.o.scale_zero, layer)
        gate, up = self._mm(layer.norms[1](h), layer.gate_up_codes, layer.gate_up_scale_zero,
                            layer).chunk(2, -1)
        return h + self._mm(layer.act(gate) * up, layer.down.qweight, layer.down.scale_zero, layer)

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        h = self.model.get_input_embeddings()(ids)
        for i in range(len(self.layers)):
            h = self._layer(i, h, positions)
        logits = self.model.get_output_embeddings()(self.model.model.norm(h[-1:]))
        return logits.float()

    def _step(self, token: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        return self._forward(token, position).argmax(-1)

    @torch.inference_mode()
    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        """A prompt (1-D token ids) from position 0, eagerly; the next token ([1] int64)."""
        return self._forward(ids, torch.arange(ids.numel())).argmax(-1)

    @torch.inference_mode()
    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        """The last position's logits [1, vocab] (fp32) of a prompt from position 0: the check against
        transformers."""
        return self._forward(ids, torch.arange(ids.numel()))

    @torch.inference_mode()
    def step(self, token: torch.Tensor, position: int) -> torch.Tensor:
        """One token ([1] int64) at ``position`` -> the next token ([1] int64)."""
        return (self._compiled or self._step)(token, torch.tensor([position]))
