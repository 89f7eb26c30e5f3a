"""Build a 4- or 8-bit ONNX decoder straight from safetensors shards, one weight at a time.

Why not export and then quantize: optimum's exporter traces the model in fp32 and ONNX Runtime's
``MatMulNBitsQuantizer`` loads the whole graph with its weights, so a 7B needs about 27 GB twice
over. This module writes the graph the way onnxruntime-genai's model builder does (its
``builder.py`` itself wants transformers 5): the decoder is spelled out node by node from the
config, and each linear weight is read from the memory-mapped shards, transposed, block-quantized
by ONNX Runtime's own kernel (``DefaultWeightOnlyQuantizer.qbits_block_quant``, the routine
``MatMulNBitsQuantizer`` runs per tensor) and appended to ``model.onnx_data`` before the next is
read. The peak is one weight in fp32 plus its packed copy; the graph itself holds only offsets.

The graph keeps the interface optimum exports for ``text-generation-with-past`` (inputs
``input_ids``, ``attention_mask``, ``position_ids``, ``past_key_values.{i}.key|value``
``[batch, kv_heads, past, head_dim]``; outputs ``logits``, ``present.{i}.key|value``), so
:class:`~edgekit.runtimes.onnxruntime.runner.ORTRunner` and OpenVINO's reader take it as they
take an optimum export. Attention is written in standard ONNX ops (rotary embedding from
transformers' own ``ROPE_INIT_FUNCTIONS``, causal plus padding mask, grouped KV heads
repeated), so only ``com.microsoft.MatMulNBits`` is a contrib op; norms and rotary tables
stay fp32, every linear (the LM head included) is MatMulNBits (4-bit, or 8-bit: the same op and
block layout with ``bits=8``, the int8 graph that fits a 7B), and the token embeddings are
fp32 or, with ``int8_embeddings`` (OpenVINO's int4 recipe: NNCF keeps them at int8 too), int8
codes with one scale per row, dequantized after the lookup in standard ops.

:func:`graph_bytes` prices that graph from the config alone, tensor kind by tensor kind as the builder writes
them (the planner calls it through the variants' registry entries): a tied head is stored twice (the
embedding for the Gather, a MatMulNBits copy for the logits), and each rotary set's cos and sin tables
(:func:`rope_table_shape`) are stored too: 64 MiB for Gemma 3's two sets over 32k positions, as much as
its 4-bit decoder blocks.

Supported, because each is written here as transformers computes it (and the graph is checked against
transformers' own model: tests/runtimes/test_onnx_gemma.py):

- the Llama block layout (``llama``, ``mistral``, ``qwen2``): RMSNorm, rotary, SiLU-gated MLP, optional
  q/k/v bias. Attention is full causal: a sliding window (Mistral/Qwen2 option) is not applied, which
  only matters past the window;
- Gemma 3 text models (``gemma3_text``): token embeddings times sqrt(hidden) (fp32), RMSNorm scaling
  by (1 + w), norms on the attention and MLP outputs before each residual add and a separate pre-MLP
  norm, RMSNorm over head_dim on every query and key head before rotary, a GELU-tanh gated MLP
  (spelled in standard ops: opset 17 has no Gelu), scores scaled by ``query_pre_attn_scalar ** -0.5``,
  and per layer (``layer_types``) either full causal attention with rotary from ``rope_theta`` and
  ``rope_scaling`` or a sliding window of ``sliding_window`` tokens with rotary from
  ``rope_local_base_freq``; ``final_logit_softcapping`` when set. ``attn_logit_softcapping`` is not
  applied because transformers' Gemma 3 does not apply it (q/k norms replaced Gemma 2's capping), and
  the graph computes what the PyTorch baseline does. The KV cache stays full length on sliding
  layers too: the window is a mask, which is exact but saves no memory. A bidirectional Gemma 3
  (``use_bidirectional_attention``, an embedding-model option) or another activation is refused.

Other families (Gemma 2, Phi, GPT-2...) differ in block layout, and writing one without a parity
test against transformers would only move the error; they are refused with the variants that export
any architecture.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from edgekit.core.errors import VariantError
from edgekit.core.progress import tqdm
from edgekit.core.quiet import root_logging_kept
from edgekit.models.checkpoint import read_tensor, tensor_shards
from edgekit.models.config import config_layout
from edgekit.models.layout import top_module
from edgekit.models.load import model_config, resolve_source
from edgekit.runtimes.onnx.files import EXTERNAL_DATA_FILE, EXTERNAL_DATA_THRESHOLD, MODEL_FILE

LLAMA_TYPES = ("llama", "mistral", "qwen2")
GEMMA3_TYPES = ("gemma3_text",)
SUPPORTED_TYPES = LLAMA_TYPES + GEMMA3_TYPES
GELU_TANH = ("gelu_pytorch_tanh", "gelu_python_tanh")  # Gemma 3's hidden_activation, one formula
OPSET = 17
ALIGN = 4096  # external tensors start on page boundaries, so ONNX Runtime can map them


ACCURACY_LEVELS = (0, 1, 2, 3, 4)  # unset, fp32, fp16, bf16, int8 compute
BLOCK_SIZES = (16, 32, 64, 128, 256)


def check_matmul_nbits(block_size: int, accuracy_level: int) -> None:
    """Refuse a MatMulNBits block size or accuracy level ONNX Runtime's CPU kernel does not take."""
    if block_size not in BLOCK_SIZES:
        raise VariantError(f"block size {block_size} is not supported by MatMulNBits; use one of {BLOCK_SIZES}")
    if accuracy_level not in ACCURACY_LEVELS:
        raise VariantError(f"accuracy_level={accuracy_level}; choose one of {ACCURACY_LEVELS} "
                           "(0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8 compute)")


def supports(config) -> bool:
    return getattr(config, "model_type", None) in SUPPORTED_TYPES


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def rope_table_shape(config) -> tuple[int, int]:
    """(positions, width) of each cos or sin table the graph stores: every position the config allows, half
    the head (the graph repeats it over the second half)."""
    return int(config.max_position_embeddings), _head_dim(config) // 2


def matmul_nbits_bytes(out_f: int, in_f: int, bias: bool, bits: int, block_size: int, symmetric: bool) -> int:
    """Bytes of one linear as :meth:`_Writer.linear` stores it, the layout of ONNX Runtime's
    ``qbits_block_quant``: per output row, ``in_f`` padded to whole blocks of b-bit codes, an fp32 scale per block
    and (asymmetric) a b-bit zero point per block packed into bytes; an fp32 bias."""
    blocks = -(-in_f // block_size)
    zeros = 0 if symmetric else -(-blocks * bits // 8)
    return out_f * (blocks * block_size * bits // 8 + 4 * blocks + zeros) + (4 * out_f if bias else 0)


def graph_bytes(config, bits: int, block_size: int, symmetric: bool, int8_embeddings: bool = False) -> dict[str, int]:
    """Bytes per top-level module of the graph :func:`build_nbits_decoder` writes for ``config`` (a
    transformers config; nothing read but it): every decoder linear as MatMulNBits, norms fp32, the token
    embedding fp32 (or int8 codes and an fp32 scale per row), the LM head as MatMulNBits whether or not it is
    tied (a tied head is stored a second time), and fp32 cos and sin tables per rotary set (``model.rotary_emb``)."""
    _, linears, others = config_layout(config)
    vocab, hidden = config.vocab_size, config.hidden_size
    sizes = {top: vocab * hidden + 4 * vocab if int8_embeddings and top.endswith("embed_tokens") else 4 * numel
             for top, numel in others if top != "lm_head"}
    for name, out_f, in_f, bias in linears:
        top = top_module(name + ".weight")
        sizes[top] = sizes.get(top, 0) + matmul_nbits_bytes(out_f, in_f, bias, bits, block_size, symmetric)
    kinds = _block(config, _head_dim(config)).kinds if config.model_type in GEMMA3_TYPES else ("full_attention",)
    positions, width = rope_table_shape(config)
    sizes["model.rotary_emb"] = len(set(kinds)) * 2 * positions * width * 4
    sizes["lm_head"] = matmul_nbits_bytes(vocab, hidden, False, bits, block_size, symmetric)
    return sizes


class _Weights:
    """Tensors of a local safetensors checkpoint by name, read one at a time from the mapped shards."""

    def __init__(self, folder: Path) -> None:
        self.where = tensor_shards(folder)

    def __contains__(self, name: str) -> bool:
        return name in self.where

    def get(self, name: str) -> torch.Tensor:
        return read_tensor(self.where[name], name)


class _Writer:
    """The graph under construction and the external data file its initializers point into."""

    def __init__(self, out_dir: Path, bits: int, block_size: int, symmetric: bool, accuracy_level: int) -> None:
        with root_logging_kept():  # the module configures the root logger when imported
            from onnxruntime.quantization.matmul_nbits_quantizer import (
                DefaultWeightOnlyQuantConfig,
                DefaultWeightOnlyQuantizer,
            )


        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self.data = open(out_dir / EXTERNAL_DATA_FILE, "wb")
        self.bits, self.block_size, self.symmetric, self.accuracy_level = bits, block_size, symmetric, accuracy_level
        self.quantizer = DefaultWeightOnlyQuantizer(DefaultWeightOnlyQuantConfig(
            block_size=block_size, is_symmetric=symmetric, accuracy_level=accuracy_level or None, bits=bits))
        self._count = 0

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def node(self, op: str, inputs: list[str], hint: str | None = None, domain: str = "", **attrs) -> str:
        out = self.name(hint or op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=out + "_node", domain=domain, **attrs))
        return out

    def const(self, name: str, array: np.ndarray) -> str:
        """A small constant stored inside the graph."""
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def external(self, name: str, array: np.ndarray) -> str:
        """A large constant appended to the external data file (page-aligned)."""
        array = np.ascontiguousarray(array)
        offset = self.data.tell()
        pad = -offset % ALIGN
        self.data.write(b"\0" * pad)
        offset += pad
        self.data.write(array.tobytes())
        tensor = TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(array.dtype), dims=array.shape)
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", EXTERNAL_DATA_FILE), ("offset", offset), ("length", array.nbytes)):
            tensor.external_data.add(key=key, value=str(value))
        self.initializers.append(tensor)
        return name

    def linear(self, x: str, weight: torch.Tensor, name: str, bias: torch.Tensor | None = None) -> str:
        """``x @ weight.T (+ bias)`` as MatMulNBits; ``weight`` is the checkpoint's ``[out, in]`` tensor."""
        out_f, in_f = weight.shape
        packed, scales, zeros = self.quantizer.qbits_block_quant(weight.float().T.contiguous().numpy())
        inputs = [x, self.external(f"{name}_Q{self.bits}", packed), self.external(name + "_scales", scales)]
        if not self.symmetric:
            inputs.append(self.external(name + "_zero_points", zeros))
        attrs = {"K": in_f, "N": out_f, "bits": self.bits, "block_size": self.block_size}
        if self.accuracy_level:
            attrs["accuracy_level"] = self.accuracy_level
        y = self.node("MatMulNBits", inputs, name, domain="com.microsoft", **attrs)
        if bias is not None:
            y = self.node("Add", [y, self.external(name + "_bias", bias.float().numpy())])
        return y

    def close(self) -> None:
        self.data.close()


def _rope_tables(config, positions: int) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin ``[positions, head_dim / 2]`` as transformers' rotary embedding computes them (the graph
    repeats them over the second half of the head, as its ``cat([freqs, freqs])`` does)."""

    scaling = getattr(config, "rope_scaling", None) or {}
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    inv_freq, attention_scaling = ROPE_INIT_FUNCTIONS[rope_type](config, "cpu")
    freqs = torch.outer(torch.arange(positions, dtype=torch.float32), inv_freq.float())
    return ((freqs.cos() * attention_scaling).numpy(), (freqs.sin() * attention_scaling).numpy())


@dataclass(frozen=True)
class _Block:
    """What one family's decoder computes beyond the shared skeleton, read from its config."""

    norm_offset: float  # RMSNorm scales by (offset + w): Gemma stores w around 0, Llama around 1
    embed_scale: float | None  # token embeddings times this (Gemma: sqrt(hidden))
    attn_scale: float  # scores times this before the softmax
    qk_norm: bool  # RMSNorm over head_dim on each query and key head before rotary (Gemma 3)
    sandwich: bool  # norms on the attention and MLP outputs too, and a separate pre-MLP norm (Gemma)
    gelu_tanh: bool  # MLP gate through GELU's tanh approximation, else SiLU
    final_softcap: float | None  # logits capped as cap * tanh(logits / cap)
    kinds: tuple[str, ...]  # per layer: "full_attention" or "sliding_attention"
    windows: dict  # kind -> sliding window in tokens (None: full causal)
    ropes: dict  # kind -> the config its rotary tables are computed from


def _block(config, head_dim: int) -> _Block:
    if config.model_type in LLAMA_TYPES:
        return _Block(norm_offset=0.0, embed_scale=None, attn_scale=head_dim ** -0.5, qk_norm=False, sandwich=False,
                      gelu_tanh=False, final_softcap=None, kinds=("full_attention",) * config.num_hidden_layers,
                      windows={"full_attention": None}, ropes={"full_attention": config})
    local = copy.deepcopy(config)  # transformers' Gemma3TextModel builds its local rotary the same way
    local.rope_theta, local.rope_scaling = config.rope_local_base_freq, {"rope_type": "default"}
    return _Block(norm_offset=1.0, embed_scale=config.hidden_size ** 0.5,
                  attn_scale=config.query_pre_attn_scalar ** -0.5, qk_norm=True, sandwich=True, gelu_tanh=True,
                  final_softcap=config.final_logit_softcapping, kinds=tuple(config.layer_types),
                  windows={"full_attention": None, "sliding_attention": int(config.sliding_window)},
                  ropes={"full_attention": config, "sliding_attention": local})


def _refusal(config) -> str | None:
    """Why a Gemma 3 config asks for something this graph does not compute (None: it does not)."""
    if config.model_type not in GEMMA3_TYPES:
        return None
    if getattr(config, "use_bidirectional_attention", False):
        return "uses bidirectional attention, which this causal graph does not compute"
    if config.hidden_activation not in GELU_TANH:
        return f"uses the {config.hidden_activation} activation; the graph writes {' or '.join(GELU_TANH)}"
    if set(config.layer_types) - {"full_attention", "sliding_attention"}:
        return f"has layer types {sorted(set(config.layer_types))}; the graph writes full and sliding attention"
    return None


def build_nbits_decoder(source: str, out_dir: str | Path, bits: int, block_size: int, symmetric: bool,
                        accuracy_level: int, int8_embeddings: bool = False, family: str = "onnx",
                        fallback: str = "onnx-int8 or onnx-fp32") -> Path:
    """Write ``out_dir/model.onnx`` (+ ``model.onnx_data``): the decoder of ``source`` with ``bits``-bit
    (4 or 8) MatMulNBits linears, streaming the checkpoint tensor by tensor. Returns the model path.
    ``family`` (the variants' prefix) and ``fallback`` (its variants that take any architecture) name the
    caller's variants in the refusal of a model whose block the builder does not write."""
    folder = Path(resolve_source(source))
    config = model_config(source)
    if not supports(config):
        raise VariantError(f"{family}-int{bits}-g<N> builds Llama-family and Gemma 3 graphs "
                           f"({', '.join(SUPPORTED_TYPES)}); {source} is a {config.model_type}: use {fallback} for it")
    if (why := _refusal(config)) is not None:
        raise VariantError(f"{family}-int{bits}-g<N>: {source} {why}; use {fallback} for it")
    if not folder.is_dir():
        raise VariantError(f"onnx-int{bits}-g<N> reads a local folder of safetensors shards; download {source} first")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = _Weights(folder)
    w = _Writer(out_dir, bits, block_size, symmetric, accuracy_level)
    try:
        graph = _decoder_graph(w, weights, config, int8_embeddings)
    finally:
        w.close()
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    path, data = out_dir / MODEL_FILE, out_dir / EXTERNAL_DATA_FILE
    onnx.save_model(model, str(path))  # initializers already point into the data file
    if data.stat().st_size <= EXTERNAL_DATA_THRESHOLD:  # a small model stays one file, as exports do
        model = onnx.load(str(path))
        data.unlink()
        onnx.save_model(model, str(path))
    return path


def _embedding(w: _Writer, table: torch.Tensor, int8: bool) -> str:
    """The rows of ``input_ids``: a Gather from the fp32 table, or from int8 codes times each row's scale."""
    if not int8:
        return w.node("Gather", [w.external("embed_tokens", table.float().numpy()), "input_ids"])
    table = table.float()
    scales = (table.abs().amax(dim=1, keepdim=True) / 127).clamp(min=1e-12)
    codes = torch.round(table / scales).to(torch.int8)
    rows = w.node("Cast", [w.node("Gather", [w.external("embed_tokens_int8", codes.numpy()), "input_ids"])],
                  to=TensorProto.FLOAT)
    return w.node("Mul", [rows, w.node("Gather", [w.external("embed_tokens_scales", scales.numpy()), "input_ids"])])


def _decoder_graph(w: _Writer, weights: _Weights, config, int8_embeddings: bool) -> onnx.GraphProto:
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = _head_dim(config)
    layers, eps = config.num_hidden_layers, float(config.rms_norm_eps)
    block = _block(config, head_dim)
    prefix = "model."
    f32 = TensorProto.FLOAT

    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64,
                                            ["batch_size", "total_sequence_length"]),
              helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch_size", "sequence_length"])]
    outputs = [helper.make_tensor_value_info("logits", f32, ["batch_size", "sequence_length", config.vocab_size])]
    for i in range(layers):
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kind}", f32,
                                                        ["batch_size", kv_heads, "past_sequence_length", head_dim]))
            outputs.append(helper.make_tensor_value_info(f"present.{i}.{kind}", f32,
                                                         ["batch_size", kv_heads, "total_sequence_length", head_dim]))

    one = w.const("one_i64", np.array([1], np.int64))
    eps_c = w.const("rms_eps", np.array(eps, np.float32))
    scale_c = w.const("attn_scale", np.array(block.attn_scale, np.float32))
    neg = w.const("mask_min", np.array(np.finfo(np.float32).min, np.float32))
    zero_f = w.const("zero_f", np.array(0.0, np.float32))
    positions, half = rope_table_shape(config)

    def rms_norm(x: str, name: str) -> str:
        weight = weights.get(name).float() + block.norm_offset  # in fp32, as transformers does
        var = w.node("ReduceMean", [w.node("Mul", [x, x])], axes=[-1], keepdims=1)
        inv = w.node("Reciprocal", [w.node("Sqrt", [w.node("Add", [var, eps_c])])])
        return w.node("Mul", [w.node("Mul", [x, inv]), w.external(name, weight.numpy())])

    def gelu_tanh(x: str) -> str:  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))); opset 17 has no Gelu
        cube = w.node("Mul", [w.node("Mul", [x, x]), x])
        inner = w.node("Add", [x, w.node("Mul", [cube, w.const(w.name("c"), np.array(0.044715, np.float32))])])
        t = w.node("Tanh", [w.node("Mul", [inner, w.const(w.name("c"), np.array((2 / np.pi) ** 0.5, np.float32))])])
        return w.node("Mul", [w.node("Mul", [x, w.node("Add", [t, w.const(w.name("c"), np.array(1, np.float32))])]),
                              w.const(w.name("c"), np.array(0.5, np.float32))])

    def rotate(x: str, cos_b: str, sin_b: str) -> str:
        first = w.node("Slice", [x, w.const(w.name("s0"), np.array([0])), w.const(w.name("s1"), np.array([half])),
                                 w.const(w.name("sa"), np.array([-1]))])
        second = w.node("Slice", [x, w.const(w.name("s0"), np.array([half])),
                                  w.const(w.name("s1"), np.array([head_dim])), w.const(w.name("sa"), np.array([-1]))])
        rotated = w.node("Concat", [w.node("Neg", [second]), first], axis=-1)
        return w.node("Add", [w.node("Mul", [x, cos_b]), w.node("Mul", [rotated, sin_b])])

    def heads_first(x: str, n: int) -> str:  # [B, S, n*D] -> [B, n, S, D]
        shaped = w.node("Reshape", [x, w.const(w.name("shape"), np.array([0, 0, n, head_dim], np.int64))])
        return w.node("Transpose", [shaped], perm=[0, 2, 1, 3])

    def repeat_kv(x: str) -> str:  # [B, kv, T, D] -> [B, heads, T, D]
        if kv_heads == heads:
            return x
        expanded = w.node("Expand", [w.node("Unsqueeze", [x, w.const(w.name("ax"), np.array([2], np.int64))]),
                                     w.const(w.name("rep"), np.array([1, 1, heads // kv_heads, 1, 1], np.int64))])
        return w.node("Reshape", [expanded, w.const(w.name("shape"), np.array([0, heads, -1, head_dim], np.int64))])

    # the additive masks [B, 1, S, T]: key j is visible to query i when j <= past + i and attention_mask[j] = 1,
    # and on a sliding layer also j > past + i - window (transformers' sliding_window_overlay)
    past_len = w.node("Gather", [w.node("Shape", ["past_key_values.0.key"]), w.const("dim2", np.array(2, np.int64))])
    total = w.node("Gather", [w.node("Shape", ["attention_mask"]), w.const("dim1", np.array(1, np.int64))])
    step = w.const("step", np.array(1, np.int64))
    keys = w.node("Unsqueeze", [w.node("Range", [w.const("zero_i", np.array(0, np.int64)), total, step]),
                                w.const("ax0", np.array([0], np.int64))])
    queries = w.node("Unsqueeze", [w.node("Range", [past_len, total, step]), one])
    causal = w.node("LessOrEqual", [keys, queries])  # [S, T]
    padding = w.node("Unsqueeze", [w.node("Cast", ["attention_mask"], to=TensorProto.BOOL),
                                   w.const("ax12", np.array([1, 2], np.int64))])  # [B, 1, 1, T]
    masks, rotary = {}, {}
    for kind in dict.fromkeys(block.kinds):  # in layer order, so the graph is the same every build
        visible = causal
        if (window := block.windows[kind]) is not None:
            oldest = w.node("Sub", [queries, w.const(w.name("window"), np.array(window, np.int64))])
            visible = w.node("And", [visible, w.node("Greater", [keys, oldest])])
        masks[kind] = w.node("Where", [w.node("And", [visible, padding]), zero_f, neg])
        cos, sin = _rope_tables(block.ropes[kind], positions)
        rotary[kind] = [w.node("Unsqueeze", [w.node("Concat", [gathered, gathered], axis=-1), one])  # [B, 1, S, D]
                        for gathered in (w.node("Gather", [w.external(w.name(f"rope_{part}"), table), "position_ids"])
                                         for part, table in (("cos", cos), ("sin", sin)))]

    embed = weights.get(prefix + "embed_tokens.weight")
    x = _embedding(w, embed, int8_embeddings)
    if block.embed_scale is not None:
        x = w.node("Mul", [x, w.const("embed_scale", np.array(block.embed_scale, np.float32))])
    tied_head = embed if getattr(config, "tie_word_embeddings", False) or "lm_head.weight" not in weights else None
    del embed

    def maybe(name: str) -> torch.Tensor | None:
        return weights.get(name) if name in weights else None

    for i in tqdm(range(layers), desc=f"build onnx-int{w.bits}", unit="layer", leave=False):
        p, kind = f"{prefix}layers.{i}.", block.kinds[i]
        h = rms_norm(x, p + "input_layernorm.weight")
        proj = {n: w.linear(h, weights.get(f"{p}self_attn.{n}.weight"), f"{p}self_attn.{n}",
                            maybe(f"{p}self_attn.{n}.bias")) for n in ("q_proj", "k_proj", "v_proj")}
        q, k = heads_first(proj["q_proj"], heads), heads_first(proj["k_proj"], kv_heads)
        if block.qk_norm:
            q, k = rms_norm(q, p + "self_attn.q_norm.weight"), rms_norm(k, p + "self_attn.k_norm.weight")
        q, k = rotate(q, *rotary[kind]), rotate(k, *rotary[kind])
        v = heads_first(proj["v_proj"], kv_heads)
        k_all = w.node("Concat", [f"past_key_values.{i}.key", k], axis=2)
        v_all = w.node("Concat", [f"past_key_values.{i}.value", v], axis=2)
        w.nodes.append(helper.make_node("Identity", [k_all], [f"present.{i}.key"], name=f"present_{i}_key"))
        w.nodes.append(helper.make_node("Identity", [v_all], [f"present.{i}.value"], name=f"present_{i}_value"))
        scores = w.node("MatMul", [q, w.node("Transpose", [repeat_kv(k_all)], perm=[0, 1, 3, 2])])
        probs = w.node("Softmax", [w.node("Add", [w.node("Mul", [scores, scale_c]), masks[kind]])], axis=-1)
        context = w.node("Transpose", [w.node("MatMul", [probs, repeat_kv(v_all)])], perm=[0, 2, 1, 3])
        context = w.node("Reshape", [context, w.const(w.name("shape"), np.array([0, 0, heads * head_dim], np.int64))])
        attn = w.linear(context, weights.get(p + "self_attn.o_proj.weight"), p + "self_attn.o_proj",
                        maybe(p + "self_attn.o_proj.bias"))
        if block.sandwich:
            attn = rms_norm(attn, p + "post_attention_layernorm.weight")
        x = w.node("Add", [x, attn])
        h = rms_norm(x, p + ("pre_feedforward" if block.sandwich else "post_attention") + "_layernorm.weight")
        gate = w.linear(h, weights.get(p + "mlp.gate_proj.weight"), p + "mlp.gate_proj")
        up = w.linear(h, weights.get(p + "mlp.up_proj.weight"), p + "mlp.up_proj")
        act = gelu_tanh(gate) if block.gelu_tanh else w.node("Mul", [gate, w.node("Sigmoid", [gate])])
        mlp = w.linear(w.node("Mul", [act, up]), weights.get(p + "mlp.down_proj.weight"), p + "mlp.down_proj")
        if block.sandwich:
            mlp = rms_norm(mlp, p + "post_feedforward_layernorm.weight")
        x = w.node("Add", [x, mlp])

    x = rms_norm(x, prefix + "norm.weight")
    head = tied_head if tied_head is not None else weights.get("lm_head.weight")
    logits = w.linear(x, head, "lm_head")
    if block.final_softcap is not None:
        cap = w.const("final_softcap", np.array(block.final_softcap, np.float32))
        logits = w.node("Mul", [w.node("Tanh", [w.node("Div", [logits, cap])]), cap])
    w.nodes.append(helper.make_node("Identity", [logits], ["logits"], name="logits_out"))
    return helper.make_graph(w.nodes, f"edgekit-int{w.bits}-decoder", inputs, outputs, w.initializers)
