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

The activation, embedding, final norm and head are the model's own modules, so a variant's int8 table
(``embed=8``) and a bf16 rest run as they do in transformers; the layers' RMSNorms are transformers'
arithmetic on the same (stacked) weights. :func:`fusion_refusal` says why a model
cannot take this path (another architecture, a bias, a layer off the int4 kernel); it then decodes as
every other PyTorch model does (:meth:`edgekit.models.runner.TorchRunner.compile_decoding`).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from edgekit.quantizers.int4_kernel import int4_matmul

FAMILIES = ("llama", "mistral", "qwen2")  # decoder layers of one shape: pre-norm, q/k/v/o, gated MLP, RoPE
FUSED = {"qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
         "gate_up": ("mlp.gate_proj", "mlp.up_proj")}
SINGLE = {"o": "self_attn.o_proj", "down": "mlp.down_proj"}
# The compiled step's wrapper in C++ (its int4 calls go through the kernel's C shim, no Python between
# kernels: 5-8% faster a token on SmolLM2, paired; the first compile takes as long as the Python wrapper's),
# without re-checking every tensor's size and stride per call
COMPILE_OPTIONS = {"cpp_wrapper": True, "size_asserts": False}


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
    group_size = getattr(model.model.layers[0].self_attn.o_proj, "group_size", None)
    for layer in model.model.layers:
        for name in [*SINGLE.values(), *(n for names in FUSED.values() for n in names)]:
            linear = layer.get_submodule(name)
            if getattr(linear, "kernel", None) != kernel or linear.bias is not None:
                return f"{name} is not a bias-free layer on {kernel}"
            if linear.group_size != group_size:  # the decoder runs every projection with one group size
                return f"{name} has groups of {linear.group_size}, o_proj of layer 0 of {group_size}"
            if name not in SINGLE.values() and linear.out_features % block_rows:
                return f"{name} has {linear.out_features} outputs, not whole blocks of {block_rows} rows to fuse"
    return None


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, -1)
    return torch.cat([-second, first], -1)


def _stack_into_views(rows: list[list[nn.Module]], name: str, dim: int) -> torch.Tensor:
    """One [layers, ...] tensor of each row's ``name`` tensors concatenated along ``dim``, filled layer by
    layer. Each module then holds a view of its part where that view is contiguous (a part's rows along
    dim 0, or a whole slice), so its own tensor is freed as the copy goes and the peak stays a layer over
    the model. (The kernel reads scale/zero whole: fused parts keep their own.)"""
    first = torch.cat([getattr(m, name) for m in rows[0]], dim)
    out = torch.empty(len(rows), *first.shape, dtype=first.dtype)
    for i, row in enumerate(rows):
        out[i] = torch.cat([getattr(m, name) for m in row], dim) if i else first
        if dim == 0 or len(row) == 1:
            for module, view in zip(row, out[i].split([getattr(m, name).shape[dim] for m in row], dim)):
                setattr(module, name, view)
    return out


class FusedDecoder(nn.Module):
    """Greedy decoding of a packed int4 llama-family model on a KV cache of :attr:`capacity` positions.

    Each weight kind of every layer lives in one stacked tensor ([layers, ...]): the model's own layers
    keep views into them, and the compiled step reads a dozen tensors instead of 400 (Dynamo checks each
    tensor it reads on every call; on SmolLM2 per-layer tensors cost about 0.9 ms a token in those checks).
    :meth:`prefill` runs a prompt eagerly and returns the next token; :meth:`step` (compiled by
    :meth:`compile`) takes one token at a position and returns the next. Both give the tokens the
    transformers forward gives for the same weights (tested on the default model).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        config, layers = model.config, list(model.model.layers)
        self.model = model  # its embedding, final norm, rotary table and head are used as they are
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.eps, self.act = config.rms_norm_eps, layers[0].mlp.act_fn
        for key, names in {**FUSED, **{k: (n,) for k, n in SINGLE.items()}}.items():
            parts = [[layer.get_submodule(n) for n in names] for layer in layers]
            self.register_buffer(f"{key}_codes", _stack_into_views(parts, "qweight", 0))
            self.register_buffer(f"{key}_scale_zero", _stack_into_views(parts, "scale_zero", 1))
        norms = [(layer.input_layernorm, layer.post_attention_layernorm) for layer in layers]
        self.register_buffer("norms", torch.stack([torch.stack([a.weight.data, b.weight.data]) for a, b in norms]))
        for i, (a, b) in enumerate(norms):  # the layers' norms read the stacked weights
            a.weight.data, b.weight.data = self.norms[i, 0], self.norms[i, 1]
        self.group_size = layers[0].self_attn.o_proj.group_size  # one group size a packed model
        self.dtype = model.get_input_embeddings()(torch.zeros(1, dtype=torch.long)).dtype
        self.capacity = 0
        self._compiled = None

    @property
    def extra_bytes(self) -> int:
        """Memory held beyond the model's own weights: the fused projections' scale/zero (their parts keep
        their own, as the kernel reads them whole)."""
        return sum(getattr(self, f"{key}_scale_zero").nbytes for key in FUSED)

    def reset(self, capacity: int) -> None:
        """An empty cache of at least ``capacity`` positions (re-made, and so re-compiled, only when it grows)."""
        if capacity > self.capacity:
            shape = (self.kv_heads, capacity, self.head_dim)  # a tensor a layer: the step writes them in place,
            self.keys = [torch.zeros(shape, dtype=self.dtype) for _ in self.norms]  # and a write into a view
            self.values = [torch.zeros(shape, dtype=self.dtype) for _ in self.norms]  # of one compiles to a copy
            positions = torch.arange(capacity)
            cos, sin = self.model.model.rotary_emb(self.keys[0], positions[None])
            self.register_buffer("cos", cos[0].to(self.dtype))
            self.register_buffer("sin", sin[0].to(self.dtype))
            self.register_buffer("positions", positions)
            self.capacity, self._compiled = capacity, None

    def compile(self) -> None:
        """Compile :meth:`step` for this capacity (the first call pays the compilation)."""
        self._compiled = torch.compile(self._step, fullgraph=True, dynamic=False, options=COMPILE_OPTIONS)

    def _mm(self, x: torch.Tensor, codes: torch.Tensor, scale_zero: torch.Tensor) -> torch.Tensor:
        # codes are [out, in/2] bytes: the width padded to whole groups is twice their columns
        return int4_matmul(x, codes, self.group_size, scale_zero, 2 * codes.shape[1]).to(self.dtype)

    def _norm(self, h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """transformers' RMSNorm of these families: in fp32, scaled by the weight in the input's dtype."""
        h32 = h.float()
        return weight * (h32 * torch.rsqrt(h32.pow(2).mean(-1, keepdim=True) + self.eps)).to(h.dtype)

    def _layer(self, i: int, h: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """h [tokens, hidden] at ``positions`` -> layer ``i``'s output; writes its cache at ``positions``."""
        tokens, heads, kv, d = h.shape[0], self.heads, self.kv_heads, self.head_dim
        qkv = self._mm(self._norm(h, self.norms[i, 0]), self.qkv_codes[i], self.qkv_scale_zero[i])
        qkv = qkv.view(tokens, heads + 2 * kv, d)
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
        h = h + self._mm(out, self.o_codes[i], self.o_scale_zero[i])
        gate, up = self._mm(self._norm(h, self.norms[i, 1]), self.gate_up_codes[i],
                            self.gate_up_scale_zero[i]).chunk(2, -1)
        return h + self._mm(self.act(gate) * up, self.down_codes[i], self.down_scale_zero[i])

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        h = self.model.get_input_embeddings()(ids)
        for i in range(len(self.norms)):
            h = self._layer(i, h, positions)
        logits = self.model.get_output_embeddings()(self.model.model.norm(h[-1:]))
        return logits.float()

    def _step(self, token: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        return self._forward(token, position).argmax(-1)

    @torch.inference_mode()
    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        """The last position's logits [1, vocab] (fp32) of a prompt (1-D token ids) from position 0, eagerly;
        it fills the cache for :meth:`step`."""
        return self._forward(ids, torch.arange(ids.numel()))

    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        """A prompt from position 0, eagerly; the next token ([1] int64)."""
        return self.logits(ids).argmax(-1)

    @torch.inference_mode()
    def step(self, token: int, position: int) -> torch.Tensor:
        """One token at ``position`` -> the next token ([1] int64). Both go in as new tensors of one kind
        every call, so one compiled graph serves them all (a token tensor straight from the eager prefill
        and one from the compiled step differ enough to need two)."""
        return (self._compiled or self._step)(torch.tensor([int(token)]), torch.tensor([position]))
