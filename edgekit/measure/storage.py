"""What a runner really holds: bits per weight and storage types, read from the loaded thing, not its name.

A variant's name is not its format: llama.cpp's ``q4_k_m`` falls back to Q5_0/Q8_0 on rows that are not
a multiple of 256 wide (SmolLM2's 576, Gemma's 640), so most of its "4-bit" block linears hold 5.5 or 8.5
bits; a PyTorch row keeps an fp32 embedding beside its packed linears. :func:`held_storage` reads

- PyTorch runners: each module's own parameters and buffers (packed codes, scales, zeros, bitsandbytes
  quantization state) over its weight's elements;
- llama.cpp runners: the GGUF's tensor types (``gguf`` package) and llama.cpp's bytes per block;
- ONNX Runtime runners: the initializers of the graph, block linears and embeddings told apart by name;
- OpenVINO runners: the IR's constants (``openvino`` reads the model, nothing is compiled): integer codes
  (u4/i4/u8/i8) are weights, the float scales and integer zero points that dequantize them add bits only;

split into block linears (``bits_per_weight``) and embeddings/head (``bits_per_weight_embeddings``), with
``storage_types``: per part, the share of its weights held in each type. ``grid_aligned`` says whether
the variant's block linears are held on a grid the baseline's weights already lie on
(:mod:`edgekit.measure.grids`), so that its error is understated: a share of at least half of the block-linear
weights whose held grid reproduces the baseline's (r below :data:`edgekit.measure.grids.ON_GRID`).
"""
from __future__ import annotations

import re
from collections import Counter
from functools import lru_cache
from pathlib import Path

import onnx
import torch
from gguf import GGML_QUANT_SIZES, GGUFReader

from edgekit.measure.grids import GRID_BY_NAME, ON_GRID, Grid, error_ratio
from edgekit.models.checkpoint import read_tensor, tensor_shards
from edgekit.models.layout import BLOCK
from edgekit.models.runner import module_weight_bytes

BLOCK_LINEARS, EMBEDDINGS = "block linears", "embeddings/head"
OPENVINO_XML = "openvino_model.xml"  # the IR an OpenVINO artifact holds (edgekit.runtimes.openvino.MODEL_XML)
# llama.cpp's names for the block linears -> the checkpoint's (Llama, Gemma, Qwen...)
GGUF_LINEARS = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                "ffn_down": "mlp.down_proj"}


class _Tally:
    """Weights and bits per part and storage type; each tensor also keeps the grid it is held on (if uniform)."""

    def __init__(self) -> None:
        self.weights: dict[str, Counter] = {BLOCK_LINEARS: Counter(), EMBEDDINGS: Counter()}
        self.bits: dict[str, float] = {BLOCK_LINEARS: 0.0, EMBEDDINGS: 0.0}
        self.grids: list[tuple[str, Grid | None, int]] = []  # (checkpoint name, held grid, weights)

    def add(self, part: str, kind: str, weights: int, bits: float, name: str = "", grid: Grid | None = None) -> None:
        self.weights[part][kind] += weights
        self.bits[part] += bits
        if part == BLOCK_LINEARS:
            self.grids.append((name, grid, weights))

    def result(self, source: str | None) -> dict:
        out = {}
        for part, key in ((BLOCK_LINEARS, "bits_per_weight"), (EMBEDDINGS, "bits_per_weight_embeddings")):
            total = sum(self.weights[part].values())
            out[key] = self.bits[part] / total if total else None
        out["storage_types"] = {part: {kind: round(n / sum(c.values()), 4) for kind, n in c.most_common()}
                                for part, c in self.weights.items() if c}
        out["grid_aligned"] = _aligned(self.grids, source) if source is not None else None
        return out


def _module_bits(module: torch.nn.Module) -> float:

    return module_weight_bytes(module) * 8.0


def _torch_kind(module: torch.nn.Module) -> tuple[str, Grid | None]:
    """A label of how a module holds its weight, and the grid it is on (None: not a uniform grid)."""
    if hasattr(module, "weight_q"):  # edgekit.quantizers.kquant
        q = module.weight_q
        return f"kq{q.bits}-b{q.group}", Grid(f"kq{q.bits}", "K-quant-like", q.bits, q.group, False, "fitted")
    if hasattr(module, "bits") and hasattr(module, "group_size"):  # edgekit.quantizers.packed.PackedLinear
        grid = Grid(f"int{module.bits}-g{module.group_size}", "RTN", module.bits, module.group_size, False, "rtn")
        return grid.name, grid
    weight = getattr(module, "weight", None)
    quant_state = getattr(weight, "quant_state", None)
    if quant_state is not None:  # bitsandbytes 4-bit: a codebook, not a uniform grid
        return f"bnb-{quant_state.quant_type}-b{quant_state.blocksize}", None
    if type(module).__name__ == "Linear8bitLt":
        return "bnb-int8-row", None
    dtype = weight.dtype if isinstance(weight, torch.Tensor) else None
    return str(dtype).replace("torch.", "") if dtype is not None else type(module).__name__, None


def _torch_storage(model: torch.nn.Module, tally: _Tally) -> None:
    seen: set[int] = set()
    counted: set[str] = set()  # modules already counted: their submodules (a KQuantWeight) are part of them
    for name, module in model.named_modules():
        if name.rpartition(".")[0] in counted:
            counted.add(name)
            continue
        weight = getattr(module, "weight", None)
        is_linear = hasattr(module, "in_features") and hasattr(module, "out_features")
        match = BLOCK.match(name)
        if is_linear and match and match["module"]:
            kind, grid = _torch_kind(module)
            counted.add(name)
            tally.add(BLOCK_LINEARS, kind, module.in_features * module.out_features, _module_bits(module),
                      name, grid)
        elif (is_linear or hasattr(module, "num_embeddings")) and not (match and match["module"]):
            if isinstance(weight, torch.Tensor) and weight.data_ptr() in seen:
                continue  # a head tied to the embedding
            if isinstance(weight, torch.Tensor):
                seen.add(weight.data_ptr())
            counted.add(name)
            count = (module.num_embeddings * module.embedding_dim if hasattr(module, "num_embeddings")
                     else module.in_features * module.out_features)
            tally.add(EMBEDDINGS, _torch_kind(module)[0], count, _module_bits(module))


def _gguf_storage(path: Path, tally: _Tally) -> None:

    for tensor in GGUFReader(str(path)).tensors:
        if len(tensor.shape) < 2 or int(tensor.shape[1]) == 1:
            continue  # norms
        block, type_bytes = GGML_QUANT_SIZES[tensor.tensor_type]
        count = int(tensor.n_elements)
        kind = tensor.tensor_type.name
        match = re.fullmatch(r"blk\.(\d+)\.(\w+)\.weight", tensor.name)
        if match and match[2] in GGUF_LINEARS:
            tally.add(BLOCK_LINEARS, kind, count, count * type_bytes * 8.0 / block,
                      f"model.layers.{match[1]}.{GGUF_LINEARS[match[2]]}", GRID_BY_NAME.get(kind))
        elif tensor.name.startswith(("token_embd", "output.")):
            tally.add(EMBEDDINGS, kind, count, count * type_bytes * 8.0 / block)


def _onnx_storage(path: Path, tally: _Tally) -> None:
    """Initializers by name: block linears (``layers.N`` in the name) and the embedding/head (``embed``,
    ``lm_head``); a MatMulNBits weight counts its K x N weights, its scales and zero points add bits only.
    Initializers named by the exporter alone (``onnx::MatMul_12``) cannot be placed and are left out."""

    model = onnx.load(str(path), load_external_data=False)
    consumers = {name: node for node in model.graph.node for name in node.input}
    for init in model.graph.initializer:
        if re.search(r"layers\.\d+\.", init.name):
            part = BLOCK_LINEARS
        elif "embed" in init.name or "lm_head" in init.name:
            part = EMBEDDINGS
        else:
            continue
        count = 1
        for d in init.dims:
            count *= d
        bits = count * onnx.helper.tensor_dtype_to_np_dtype(init.data_type).itemsize * 8.0
        node = consumers.get(init.name)
        if node is not None and node.op_type == "MatMulNBits":
            if node.input[1] == init.name:
                attrs = {a.name: a.i for a in node.attribute}
                tally.add(part, f"MatMulNBits-int{attrs['bits']}-b{attrs['block_size']}", attrs["K"] * attrs["N"],
                          bits,
                          init.name)
            else:
                tally.bits[part] += bits  # its scales and zero points
        elif len(init.dims) == 2:
            tally.add(part, onnx.TensorProto.DataType.Name(init.data_type).lower(), count, bits, init.name)
        else:
            tally.bits[part] += bits  # per-row scales of an int8 table, biases


def _part(name: str) -> str | None:
    """Which part a graph node named ``name`` belongs to (None: neither, e.g. rotary tables, shapes)."""
    if re.search(r"layers\.\d+[./]", name):
        return BLOCK_LINEARS
    return EMBEDDINGS if "embed" in name or "lm_head" in name else None


def _reached(op, depth: int = 6) -> tuple[object | None, bool]:
    """The first MatMul or Gather downstream of ``op`` (within ``depth`` nodes), and whether ``op`` reaches it
    unchanged (through type conversions only): a constant that does is a dense weight, not a scale."""
    for target in op.output(0).get_target_inputs():
        node = target.get_node()
        if node.get_type_name() in ("MatMul", "Gather"):
            return node, True
        if depth > 1:
            found, unchanged = _reached(node, depth - 1)
            if found is not None:
                return found, unchanged and node.get_type_name() == "Convert"
    return None, False


def _openvino_storage(xml: Path, tally: _Tally) -> None:
    """The IR's constants, placed by their name or else by the MatMul/Gather they feed (an exporter's
    ``onnx::MatMul_12`` by ``/model/layers.0/self_attn/q_proj/MatMul``): an integer constant of two or more
    dimensions whose last is above 1 holds codes (per row, or per group when it has three dimensions); a float one
    whose last is above 1 and that reaches a MatMul or Gather unchanged is a dense weight; the rest of a part's
    constants of two or more dimensions (scales, zero points) add bits only. Norms, biases and scalar zero points
    are left out."""
    import openvino as ov

    for op in ov.Core().read_model(str(xml)).get_ordered_ops():
        if op.get_type_name() != "Constant":
            continue
        name, shape, kind = op.get_friendly_name(), list(op.get_output_shape(0)), op.get_element_type()
        if len(shape) < 2:
            continue
        consumer, unchanged = _reached(op)
        part = _part(name) or (_part(consumer.get_friendly_name()) if consumer is not None else None)
        if part is None:
            continue
        count = 1
        for d in shape:
            count *= d
        bits = count * float(kind.bitwidth)
        if kind.is_integral() and shape[-1] > 1:
            label = f"{kind.get_type_name()}-b{shape[-1]}" if len(shape) == 3 else f"{kind.get_type_name()}-row"
            tally.add(part, label, count, bits, name)
        elif kind.is_real() and shape[-1] > 1 and unchanged:
            tally.add(part, kind.get_type_name(), count, bits, name)
        else:
            tally.bits[part] += bits


def held_storage(runner, source: str | None = None) -> dict:
    """``bits_per_weight``, ``bits_per_weight_embeddings``, ``storage_types`` and ``grid_aligned`` (None when
    ``source``, the baseline's folder, is not given) of what ``runner`` holds; {} for a runner it cannot read."""
    tally = _Tally()
    if isinstance(getattr(runner, "model", None), torch.nn.Module):
        _torch_storage(runner.model, tally)
    elif getattr(runner, "path", None) is not None and str(runner.path).endswith(".gguf"):
        _gguf_storage(Path(runner.path), tally)
    elif getattr(runner, "model_path", None) is not None and str(runner.model_path).endswith(".onnx"):
        _onnx_storage(Path(runner.model_path), tally)
    elif getattr(runner, "folder", None) is not None and (Path(runner.folder) / OPENVINO_XML).is_file():
        _openvino_storage(Path(runner.folder) / OPENVINO_XML, tally)
    else:
        return {}
    return tally.result(source)


def _sampled(name: str, blocks: int) -> bool:
    match = BLOCK.match(name)
    if not match:
        return False
    index = int(match["index"])
    return index in {0, blocks // 2, blocks - 1}


def _aligned(grids: list[tuple[str, Grid | None, int]], source: str) -> bool | None:
    """True when at least half the block-linear weights (in the sampled blocks) are held on a grid the
    baseline's same tensor already lies on; None when nothing could be checked."""
    blocks = 1 + max((int(BLOCK.match(n)["index"]) for n, _, _ in grids if BLOCK.match(n)), default=-1)
    checked = aligned = 0
    for name, grid, weights in grids:
        if not _sampled(name, blocks):
            continue
        checked += weights
        if grid is not None:
            r = _baseline_ratio(str(source), name, grid)
            aligned += weights if r is not None and r < ON_GRID else 0
    return aligned >= checked / 2 if checked else None


@lru_cache(maxsize=256)
def _baseline_ratio(source: str, name: str, grid: Grid) -> float | None:

    shard = _shards(source).get(f"{name}.weight")
    return error_ratio(read_tensor(shard, f"{name}.weight"), grid) if shard is not None else None


@lru_cache(maxsize=8)
def _shards(source: str) -> dict:

    try:
        return tensor_shards(source)
    except Exception:  # a hub id or a folder without safetensors: nothing to compare with
        return {}
