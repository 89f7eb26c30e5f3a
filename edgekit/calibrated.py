"""Calibration-based 4/3/2-bit weights (GPTQ, AWQ), mixed precision and QAT as registry variants.

No maintained GPTQ/AWQ library runs with edgekit's pinned CPU environment (GPTQModel needs
a newer torch; AutoGPTQ and AutoAWQ are archived and CUDA-bound), so both methods are
implemented here from their papers. Both write the same :class:`~edgekit.packed.PackedLinear`
as round-to-nearest ``int4-g128`` (b-bit codes, fp16 scale and uint8 zero per group), so
footprint, measurement and export are shared and only the choice of codes differs.

- **GPTQ** (Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for Generative
  Pre-trained Transformers", Algorithm 1): per linear layer the Hessian ``H = 2 X^T X / n``
  of its calibration inputs, dampened by ``damp * mean(diag H)``; the upper Cholesky factor
  of ``H^-1``; columns quantized one at a time with the error spread over the columns not
  yet quantized, in lazy batches of ``block_size`` columns; group scales taken from the
  already-updated weights when a group starts (the reference ``groupsize`` option).
- **AWQ** (Lin et al. 2023, "AWQ: Activation-aware Weight Quantization", Section 3.2):
  per input channel a scale ``s = mean|x|^alpha`` (normalised), ``alpha`` searched on a grid
  to minimise ``|| Q(W diag(s)) (diag(s)^-1 X) - W X ||^2`` over the linears that share an
  input; ``1/s`` is folded into the operator before them (RMSNorm weight, ``v_proj`` rows
  for ``o_proj`` when shapes match, ``up_proj`` rows for ``down_proj``), then RTN.

Both run block by block over the calibration split, each block calibrated on the outputs
of the blocks already quantized, as both papers do. Mixed precision (``mixed-<scheme>-kN``)
keeps the N layers that :mod:`edgekit.sensitivity` ranks most sensitive (on the calibration
split, cached under the work folder) at int8 (packed 8-bit, option ``high=fp16``), the rest
at ``<scheme>``. ``qat-intB-gG`` loads the weights of a short quantization-aware fine-tune
(:mod:`edgekit.qat`) and packs them like RTN.
"""
from __future__ import annotations

import re
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from edgekit.data import read_split
from edgekit.errors import VariantError
from edgekit.packed import PackedLinear, block_linears, dequantize, group_count, replace_module, rtn_quantize
from edgekit.variants import Variant, _torch_runner, register

BLOCK_NAME = re.compile(r"^(?P<block>.*\.(?:layers|h)\.\d+)\.(?P<module>.+)$")


# ---------------------------------------------------------------- calibration data
def calibration_ids(tokenizer, samples: int = 16, seq_len: int = 256, seed: int = 0) -> torch.Tensor:
    """``samples`` random windows of ``seq_len`` tokens from the calibration split (seeded), [samples, seq_len]."""
    ids = tokenizer(read_split("calibration"), return_tensors="pt", add_special_tokens=False,
                    verbose=False)["input_ids"][0]
    if len(ids) <= seq_len:
        raise VariantError(f"the calibration split has {len(ids)} tokens; use seq_len below that")
    starts = np.random.default_rng(seed).integers(0, len(ids) - seq_len, size=samples)
    return torch.stack([ids[s : s + seq_len] for s in starts])


def split_block(name: str) -> tuple[str, str]:
    """``model.layers.3.self_attn.q_proj`` -> (``model.layers.3``, ``self_attn.q_proj``)."""
    match = BLOCK_NAME.match(name)
    if not match:
        raise VariantError(f"{name} is not inside a decoder block")
    return match["block"], match["module"]


def blocks_in_order(model: nn.Module) -> dict[str, list[str]]:
    """Block name -> the names of its linear layers, in forward order."""
    blocks: dict[str, list[str]] = {}
    for name in block_linears(model):
        blocks.setdefault(split_block(name)[0], []).append(name)
    return blocks


class _StopForward(Exception):
    pass


@contextmanager
def single_thread():
    """Run a loop of many tiny tensor ops on one thread: on a busy CPU, waking a second
    thread for each costs more than the op (GPTQ's column loop ran 25x faster so)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@torch.no_grad()
def _feed_until_stopped(model: nn.Module, calib: torch.Tensor, batch_size: int, handles: list) -> None:
    """Run the calibration batches through ``model``; a hook among ``handles`` ends each pass early
    by raising _StopForward once it has what it needs. The hooks are removed afterwards."""
    device = next(model.parameters()).device
    try:
        for start in range(0, len(calib), batch_size):
            try:
                model(input_ids=calib[start : start + batch_size].to(device), use_cache=False)
            except _StopForward:
                pass
    finally:
        for handle in handles:
            handle.remove()


def collect_inputs(model: nn.Module, names: list[str], calib: torch.Tensor, on_input, batch_size: int = 8) -> None:
    """Run ``calib`` through ``model`` and call ``on_input(name, x)`` with each named linear's input
    ``x`` ([tokens, in_features]); the forward stops after the last of their blocks."""
    order = list(blocks_in_order(model))
    last_block = max((split_block(n)[0] for n in names), key=order.index)
    handles = [model.get_submodule(n).register_forward_pre_hook(
        lambda mod, args, n=n: on_input(n, args[0].reshape(-1, args[0].shape[-1]).float())) for n in names]

    def stop(*_):
        raise _StopForward

    handles.append(model.get_submodule(last_block).register_forward_hook(stop))
    _feed_until_stopped(model, calib, batch_size, handles)


def hessians(model: nn.Module, names: list[str], calib: torch.Tensor) -> dict[str, torch.Tensor]:
    """GPTQ's ``H = 2 X^T X / n`` of each named linear's calibration inputs (one forward pass)."""
    sums, rows = {}, dict.fromkeys(names, 0)

    def add(name, x):
        x = x.cpu()
        if name not in sums:
            sums[name] = torch.zeros(x.shape[1], x.shape[1])
        sums[name].addmm_(x.T, x)
        rows[name] += x.shape[0]

    collect_inputs(model, names, calib, add)
    return {n: 2 * sums[n] / max(rows[n], 1) for n in names}


@torch.no_grad()
def quantize_blockwise(model: nn.Module, calib: torch.Tensor, quantize_block, desc: str,
                       progress: bool = True, batch_size: int = 8) -> nn.Module:
    """The sequential driver both papers use: the calibration batches' inputs to the first block are
    captured once, then each block in turn is calibrated on them (``quantize_block(block, names,
    feed)``; ``feed(names, on_input)`` replays the block with input hooks on those linears) and,
    quantized, produces the next block's inputs."""
    blocks = blocks_in_order(model)
    states = []

    def grab(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        states.append((hidden, {k: v for k, v in kwargs.items() if k != "hidden_states"}))
        raise _StopForward

    handle = model.get_submodule(next(iter(blocks))).register_forward_pre_hook(grab, with_kwargs=True)
    _feed_until_stopped(model, calib, batch_size, [handle])

    def run(module):
        outs = [module(hidden, **kwargs) for hidden, kwargs in states]
        return [(out[0] if isinstance(out, tuple) else out, kwargs) for out, (_, kwargs) in zip(outs, states)]

    for block, names in tqdm(blocks.items(), desc=desc, unit="block", disable=not progress, leave=False):
        module = model.get_submodule(block)

        def feed(wanted, on_input):
            handles = [model.get_submodule(n).register_forward_pre_hook(
                lambda mod, args, n=n: on_input(n, args[0].reshape(-1, args[0].shape[-1]).float().cpu()))
                for n in wanted]
            try:
                run(module)
            finally:
                for h in handles:
                    h.remove()

        quantize_block(block, names, feed)
        states = run(module)
    return model


# ---------------------------------------------------------------- GPTQ
def _group_params(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Min-max scale (rounded to the fp16 PackedLinear stores) and zero of one group [out, g]."""
    _, scale, zero = rtn_quantize(w, bits, w.shape[1])
    return scale[:, 0].half().float(), zero[:, 0].float()


@torch.no_grad()
def gptq_quantize(weight: torch.Tensor, hessian: torch.Tensor, bits: int, group_size: int,
                  damp: float = 0.01, block_size: int = 128):
    """GPTQ codes, scales and zeros of one weight [out, in] given its Hessian [in, in]."""
    W = weight.detach().float().clone()
    out_features, cols = W.shape
    H = hessian.clone().float()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H += damp * torch.mean(torch.diag(H)) * torch.eye(cols, device=H.device)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    qmax = (1 << bits) - 1
    codes = torch.zeros(out_features, cols, dtype=torch.uint8, device=W.device)
    scales = torch.zeros(out_features, group_count(cols, group_size), device=W.device)  # a ragged last group counts
    zeros = torch.zeros_like(scales, dtype=torch.uint8)
    block = max(block_size // group_size, 1) * group_size  # lazy batches hold whole groups
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        W1, Hinv1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2]
        Err1 = torch.zeros_like(W1)
        for i in range(i2 - i1):
            col = i1 + i
            if col % group_size == 0:
                scale, zero = _group_params(W1[:, i : i + group_size], bits)
                scales[:, col // group_size], zeros[:, col // group_size] = scale, zero.to(torch.uint8)
            w = W1[:, i]
            q = torch.clamp(torch.round(w / scale) + zero, 0, qmax)
            codes[:, col] = q.to(torch.uint8)
            err = (w - (q - zero) * scale) / Hinv1[i, i]
            W1[:, i:] -= err[:, None] * Hinv1[i, i:][None, :]
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    return codes, scales, zeros


def quantize_gptq(model: nn.Module, calib: torch.Tensor, bits: int, group_size: int,
                  skip: frozenset[str] = frozenset(), damp: float = 0.01, progress: bool = True) -> nn.Module:
    """Replace every decoder-block linear (except ``skip``) by a GPTQ PackedLinear, block by block, in place."""
    def quantize_block(block, names, feed):
        names = [n for n in names if n not in skip]
        sums, rows = {}, dict.fromkeys(names, 0)

        def add(name, x):
            sums[name] = sums[name].addmm_(x.T, x) if name in sums else x.T @ x
            rows[name] += x.shape[0]

        feed(names, add)
        for name in names:
            linear = model.get_submodule(name)
            with single_thread():
                codes, scale, zero = gptq_quantize(linear.weight, 2 * sums[name] / rows[name], bits, group_size, damp)
            replace_module(model, name, PackedLinear.from_codes(codes, scale, zero, bits, group_size, linear.bias))

    return quantize_blockwise(model, calib, quantize_block, f"GPTQ int{bits}-g{group_size}", progress)


# ---------------------------------------------------------------- AWQ
def rtn_dequantized(weight: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """The weight after an RTN round trip (fp16 scales), as PackedLinear would hold it."""
    codes, scale, zero = rtn_quantize(weight, bits, group_size)
    return dequantize(codes, scale.half().float(), zero, group_size)


def awq_scale(x: torch.Tensor, weights: list[torch.Tensor], bits: int, group_size: int, grid: int = 20) -> torch.Tensor:
    """AWQ's per-input-channel scale for linears sharing the input ``x`` [tokens, in]."""
    W = torch.cat([w.float() for w in weights])
    reference = x @ W.T
    x_mean = x.abs().mean(0)
    best, best_loss = torch.ones_like(x_mean), float("inf")
    for k in range(grid):
        s = x_mean.pow(k / grid).clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()
        loss = float(((x @ (rtn_dequantized(W * s, bits, group_size) / s).T - reference) ** 2).mean())
        if loss < best_loss:
            best, best_loss = s, loss
    return best


def _awq_groups(model: nn.Module, block: str) -> list[tuple[nn.Module, list[str]]]:
    """(operator before, linears sharing its output) for a Llama-style decoder block."""
    def get(suffix):
        try:
            return model.get_submodule(f"{block}.{suffix}")
        except AttributeError:
            raise VariantError(f"AWQ here knows Llama-style blocks (input_layernorm, self_attn.q/k/v/o_proj, "
                               f"mlp.gate/up/down_proj); {block} has no {suffix}. Use gptq-* instead") from None

    groups = [(get("input_layernorm"), [f"{block}.self_attn.{p}_proj" for p in "qkv"]),
              (get("post_attention_layernorm"), [f"{block}.mlp.gate_proj", f"{block}.mlp.up_proj"]),
              (get("mlp.up_proj"), [f"{block}.mlp.down_proj"])]
    v, o = get("self_attn.v_proj"), get("self_attn.o_proj")
    if v.weight.shape[0] == o.weight.shape[1]:  # with grouped-query attention the shapes differ: no fold
        groups.insert(1, (v, [f"{block}.self_attn.o_proj"]))
    return groups


@torch.no_grad()
def quantize_awq(model: nn.Module, calib: torch.Tensor, bits: int, group_size: int,
                 skip: frozenset[str] = frozenset(), max_rows: int = 4096, progress: bool = True) -> nn.Module:
    """AWQ-scale then RTN-quantize every decoder-block linear (except ``skip``), block by block, in place."""
    def quantize_block(block, names, feed):
        groups = _awq_groups(model, block)
        inputs: dict[str, list[torch.Tensor]] = {}
        feed([members[0] for _, members in groups], lambda n, x: inputs.setdefault(n, []).append(x))
        scales = []
        for prev, members in groups:
            x = torch.cat(inputs[members[0]])
            x = x[torch.linspace(0, len(x) - 1, min(max_rows, len(x))).long()]
            with single_thread():
                scales.append(awq_scale(x, [model.get_submodule(m).weight for m in members], bits, group_size))
        for (prev, members), s in zip(groups, scales):  # fold 1/s before, s into the linears: same function
            if isinstance(prev, nn.Linear):
                prev.weight.div_(s[:, None])
                if prev.bias is not None:
                    prev.bias.div_(s)
            else:
                prev.weight.div_(s)
            for m in members:
                model.get_submodule(m).weight.mul_(s)
        for name in names:
            if name not in skip:
                replace_module(model, name, PackedLinear.from_linear(model.get_submodule(name), bits, group_size))

    return quantize_blockwise(model, calib, quantize_block, f"AWQ int{bits}-g{group_size}", progress)


# ---------------------------------------------------------------- mixed precision
class HalfLinear(nn.Module):
    """A linear layer kept at 16 bits (fp16 weight) inside a float32 model."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.register_buffer("weight", linear.weight.detach().half())
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))


def high_precision_layer(linear: nn.Linear, high: str, group_size: int) -> nn.Module:
    if high == "int8":
        return PackedLinear.from_linear(linear, 8, group_size)
    if high == "fp16":
        return HalfLinear(linear)
    raise VariantError(f"high={high!r}; choose int8 (packed 8-bit) or fp16 for the kept layers")


def mixed_layer_schemes(variant: "str | Variant", source: str = "default") -> dict[str, str]:
    """Per-layer variant names of a ``mixed-<scheme>-kN`` variant, as the planner counts them."""
    from edgekit.loading import load_model

    variant = Variant.parse(variant)
    scheme = Variant.parse(variant.field("scheme"))
    model = load_model(source, dtype=torch.float32)
    names = list(block_linears(model))
    del model
    kept = set(mixed_kept_layers(variant, source))
    high = variant.option("high", "int8")
    high_name = f"int8-g{scheme.group_size}" if high == "int8" else high
    return {n: high_name if n in kept else scheme.name for n in names}


def mixed_kept_layers(variant: Variant, source: str) -> list[str]:
    from edgekit.sensitivity import ranking

    scheme = Variant.parse(variant.field("scheme"))
    rtn_scheme = f"int{scheme.bits}-g{scheme.group_size}"  # rank by RTN: the same bits, no calibration needed
    order = ranking(source, rtn_scheme, tokens=int(variant.option("rank_tokens", 2048)))
    k = variant.field("k")
    if k > len(order):
        raise VariantError(f"{variant.name} keeps {k} layers but the model has {len(order)} block linears")
    return order[:k]


# ---------------------------------------------------------------- registry entries
def _calibration(variant: Variant, tokenizer) -> torch.Tensor:
    return calibration_ids(tokenizer, int(variant.option("samples", 16)), int(variant.option("seq_len", 256)),
                           int(variant.option("seed", 0)))


def apply_scheme(model: nn.Module, scheme: Variant, tokenizer, skip: frozenset[str] = frozenset(),
                 calib_from: Variant | None = None) -> nn.Module:
    """Quantize ``model`` in place with an RTN, GPTQ or AWQ scheme (calibration options read from ``calib_from``)."""
    from edgekit.packed import quantize_rtn

    method = scheme.field("method")
    if method is None:
        return quantize_rtn(model, scheme.bits, scheme.group_size, skip)
    calib = _calibration(calib_from or scheme, tokenizer)
    if method == "gptq":
        return quantize_gptq(model, calib, scheme.bits, scheme.group_size, skip,
                             damp=float((calib_from or scheme).option("damp", 0.01)))
    return quantize_awq(model, calib, scheme.bits, scheme.group_size, skip)


@register(r"(?P<method>gptq|awq)-int(?P<bits>[234])-g(?P<group_size>\d+)", "pytorch",
          "calibrated weight-only GPTQ / AWQ into packed codes (options samples=16, seq_len=256, seed=0, damp=0.01)",
          ("gptq-int4-g128", "gptq-int4-g64", "gptq-int3-g128", "gptq-int2-g64", "awq-int4-g128", "awq-int3-g128"))
def build_calibrated(variant: Variant, source: str, tokenizer):
    runner = _torch_runner(variant, source, tokenizer, dtype=torch.float32)
    apply_scheme(runner.model, variant, tokenizer)
    return runner


@register(r"mixed-(?P<scheme>(?:(?:gptq|awq)-)?int[234]-g\d+)-k(?P<k>\d+)", "pytorch",
          "the k most sensitive block linears at int8 (options high=fp16, rank_tokens=2048), the rest at <scheme>",
          ("mixed-int4-g128-k4", "mixed-int3-g64-k6", "mixed-int2-g64-k8", "mixed-gptq-int3-g128-k4"))
def build_mixed(variant: Variant, source: str, tokenizer):
    scheme = Variant.parse(variant.field("scheme"))
    kept = mixed_kept_layers(variant, source)
    runner = _torch_runner(variant, source, tokenizer, dtype=torch.float32)
    high = variant.option("high", "int8")
    for name in kept:
        replace_module(runner.model, name, high_precision_layer(runner.model.get_submodule(name), high,
                                                                scheme.group_size))
    apply_scheme(runner.model, scheme, tokenizer, skip=frozenset(kept), calib_from=variant)
    return runner


@register(r"qat-int(?P<bits>[234])-g(?P<group_size>\d+)", "pytorch",
          "RTN-packed weights of a short seeded quantization-aware fine-tune (options steps=, seed=, lr=)",
          ("qat-int2-g64", "qat-int3-g128"))
def build_qat(variant: Variant, source: str, tokenizer):
    from edgekit.loading import load_model
    from edgekit.packed import quantize_rtn
    from edgekit.qat import QATSettings, qat_checkpoint
    from edgekit.runners import TorchRunner

    settings = QATSettings(bits=variant.bits, group_size=variant.group_size,
                           **{k: v for k, v in variant.options if k in QATSettings.__dataclass_fields__})
    folder = qat_checkpoint(source, settings, tokenizer)
    model = load_model(str(folder), dtype=torch.float32)
    quantize_rtn(model, variant.bits, variant.group_size)
    return TorchRunner(str(variant), model, tokenizer)
