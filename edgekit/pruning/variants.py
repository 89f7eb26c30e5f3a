"""Pruning, the guide's third lever, as registry variants composable with quantization.

One grammar, stages in the order they run: ``prune-<method>-<amount>[+distill][+<scheme>]``.

- ``prune-magnitude-50%``: unstructured, per output row, the 50% of weights of smallest |W|
  (Han et al. 2015, "Learning both Weights and Connections for Efficient Neural Networks").
- ``prune-wanda-50%``: unstructured, per output row, the weights of smallest ``|W_ij| * ||X_j||_2``
  where ``||X_j||_2`` is the norm of input feature j over the calibration tokens (Sun et al. 2023,
  "A Simple and Effective Pruning Approach for Large Language Models", Eq. 1, comparison group
  = the output row), block by block, each block calibrated on the outputs of the pruned ones
  before it (the paper's sequential setting).
- ``prune-wanda-2of4`` / ``prune-magnitude-2of4``: N:M semi-structured, N weights kept in every
  M consecutive inputs of a row, scored as above (2:4 is the pattern sparse tensor cores run;
  Mishra et al. 2021, "Accelerating Sparse Deep Neural Networks").
- ``prune-mlp-25%``: structured, the 25% least important MLP channels of every block (the same
  count in each, so the config stays uniform): importance ``||X_j||_2 * ||W_down[:, j]||_2``,
  the norm of what channel j adds to the residual stream (the activation-weighted criterion of
  Wanda, taken per channel as LLM-Pruner, Ma et al. 2023, and FLAP, An et al. 2024, do).
- ``prune-heads-50%``: structured, whole key/value groups (a KV head with the query heads that read
  it; under multi-head attention each head is its own group), scored the same way on ``o_proj``'s
  input: q/k/v/o and the KV cache all shrink, ``num_key_value_heads`` drops with
  ``num_attention_heads``, and every group left keeps its query heads, so grouped-query attention
  holds (pruning whole groups, as Sheared-LLaMA, Xia et al. 2023, and Minitron, Muralidharan et al.
  2024, do for GQA models).
- ``prune-depth-33%``: whole decoder layers. ``rule=bi`` (default) drops the layers of lowest
  Block Influence ``1 - E[cos(x_in, x_out)]`` (Men et al. 2024, "ShortGPT: Layers in Large
  Language Models are More Redundant Than You Expect"); ``rule=angular`` drops the contiguous run
  whose input and output are closest in angular distance (Gromov et al. 2024, "The Unreasonable
  Ineffectiveness of the Deeper Layers").
- ``+distill``: a short seeded KL distillation from the unpruned model to win quality back
  (:func:`edgekit.quantizers.distill.kl_distill`, the loop QAT uses; unstructured masks are kept),
  reported as KL won back per training minute (options ``steps``, ``lr``, ``batch_size``...).
- ``+int4-g64`` (any ``int{2,3,4,8}-gG``, ``gptq-``/``awq-int{2,3,4}-gG``): quantize what is left
  with :func:`edgekit.quantizers.calibrated.apply_scheme`.

**Bytes are honest.** Structured pruning shrinks the matrices and changes the config, so every
runtime gets smaller and faster; the pruned checkpoint is saved under the work folder and
loads with plain ``AutoModelForCausalLM.from_pretrained``. :func:`pruned_config` gives the
pruned config from the original config alone, and the registry entry hands it to the planner
(``held_config``), so ``plan.weight_bytes(model, "prune-mlp-25%")``, the KV cache and the plan
price the pruned shapes exactly (the load's peak stays the full fp32 model it starts from).
Unstructured and N:M zeros are *stored dense*: no runtime edgekit drives here reads a sparse
format on a CPU (sparse kernels such as ``torch.sparse.to_sparse_semi_structured`` need a CUDA
GPU with sparse tensor cores; OpenVINO's CPU sparse weight decompression,
``CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE``, applies only to int8-quantized layers on CPUs with
Intel AMX), so their weight bytes and speed equal their dense base's, and the registry prices
them so.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from edgekit.core.errors import VariantError
from edgekit.core.paths import staged, variant_calibration_ids, work_dir
from edgekit.memory.guard import admit, guarded_fp32_load, guarded_load
from edgekit.memory.plan import load_config
from edgekit.models.layout import block_linears, split_block
from edgekit.models.load import load_model, load_tokenizer, model_key, resolve_source
from edgekit.models.runner import TorchRunner
from edgekit.quantizers.calibrated import apply_scheme
from edgekit.quantizers.calibration import collect_inputs, quantize_blockwise
from edgekit.quantizers.distill import DistillSettings, kl_distill, kl_per_minute
from edgekit.variants.registry import GUARD_OPTIONS, Variant, dense_linear_bytes, device_of, register

UNSTRUCTURED = ("magnitude", "wanda")
STRUCTURED = ("mlp", "heads", "depth")
CALIBRATION_OPTIONS = ("samples", "seq_len", "seed", "damp", "rule")
DISTILL_OPTIONS = tuple(f for f in DistillSettings.__dataclass_fields__ if f != "seed")
# Part of a pruned checkpoint's key: raised when a method changes what it removes, so stale checkpoints
# are not reused (2: heads pruning removes whole key/value groups)
CHECKPOINT_FORMAT = 2
_STAGE = (r"prune-(?P<method>magnitude|wanda|mlp|heads|depth)-"
          r"(?:(?P<percent>\d+(?:\.\d+)?)%|(?P<n>\d+)of(?P<m>\d+))")
_SCHEME = r"(?:\+(?P<scheme>(?:(?:gptq|awq)-int[234]|int[2348])-g\d+))?"


# ---------------------------------------------------------------- the parsed variant
@dataclass(frozen=True)
class PruneSpec:
    method: str
    percent: float | None = None   # share of weights / channels / heads / layers removed
    n: int | None = None           # N:M: keep n of every m
    m: int | None = None
    distill: bool = False
    scheme: str | None = None

    @classmethod
    def of(cls, variant: "str | Variant") -> "PruneSpec":
        variant = Variant.parse(variant)
        spec = cls(variant.field("method"), variant.field("percent"), variant.field("n"), variant.field("m"),
                   "+distill" in variant.name, variant.field("scheme"))
        if spec.method is None:
            raise VariantError(f"{variant.name} is not a pruning variant; write prune-<method>-<amount>")
        if spec.n is not None:
            if spec.method not in UNSTRUCTURED:
                raise VariantError(f"{variant.name}: N:M patterns (e.g. 2of4) apply to magnitude or wanda; "
                                   f"{spec.method} prunes by a percentage, e.g. prune-{spec.method}-25%")
            if not 0 < spec.n < spec.m:
                raise VariantError(f"{variant.name}: keep n of every m with 0 < n < m, e.g. 2of4")
        elif not 0 < spec.percent < 100:
            raise VariantError(f"{variant.name}: the share removed must be above 0% and below 100%")
        return spec

    @property
    def structured(self) -> bool:
        return self.method in STRUCTURED

    @property
    def amount(self) -> str:
        return f"{self.n}of{self.m}" if self.n is not None else f"{self.percent:g}%"

    @property
    def stage(self) -> str:
        """The name without the quantization scheme: what the pruned (and distilled) checkpoint holds."""
        return f"prune-{self.method}-{self.amount}" + ("+distill" if self.distill else "")


# ---------------------------------------------------------------- unstructured and N:M masks
def wanda_scores(weight: torch.Tensor, input_norm: torch.Tensor) -> torch.Tensor:
    """Wanda's importance ``|W_ij| * ||X_j||_2`` (Sun et al. 2023, Eq. 1); ``input_norm`` [in]."""
    return weight.detach().abs().float() * input_norm.float()[None, :].to(weight.device)


def row_mask(scores: torch.Tensor, percent: float) -> torch.Tensor:
    """Keep-mask removing, in every output row, the ``round(in * percent / 100)`` lowest scores."""
    k = round(scores.shape[1] * percent / 100)
    mask = torch.ones_like(scores, dtype=torch.bool)
    if k:
        mask.scatter_(1, scores.argsort(dim=1, stable=True)[:, :k], False)
    return mask


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep-mask holding the ``n`` highest scores in every ``m`` consecutive inputs of a row."""
    out_f, in_f = scores.shape
    if in_f % m:
        raise VariantError(f"{n}of{m} needs input widths divisible by {m}; a layer has {in_f} inputs")
    groups = scores.reshape(out_f, in_f // m, m)
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(2, groups.topk(n, dim=2).indices, True)
    return mask.reshape(out_f, in_f)


def keep_mask(scores: torch.Tensor, spec: PruneSpec) -> torch.Tensor:
    return nm_mask(scores, spec.n, spec.m) if spec.n is not None else row_mask(scores, spec.percent)


@torch.no_grad()
def prune_unstructured(model: nn.Module, spec: PruneSpec, calib: torch.Tensor | None = None,
                       progress: bool = True) -> dict[str, torch.Tensor]:
    """Zero the pruned weights of every decoder-block linear in place; returns the keep-masks by name."""
    masks: dict[str, torch.Tensor] = {}

    def prune(name: str, scores: torch.Tensor) -> None:
        linear = model.get_submodule(name)
        masks[name] = keep_mask(scores, spec).to(linear.weight.device)
        linear.weight.mul_(masks[name])

    if spec.method == "magnitude":
        for name, linear in block_linears(model).items():
            prune(name, linear.weight.abs().float())
        return masks
    if calib is None:
        raise VariantError("Wanda needs calibration tokens (calibration_ids)")

    def prune_block(block, names, feed):
        sums: dict[str, torch.Tensor] = {}
        feed(names, lambda n, x: sums.__setitem__(n, sums[n] + (x * x).sum(0) if n in sums else (x * x).sum(0)))
        for name in names:
            prune(name, wanda_scores(model.get_submodule(name).weight, sums[name].sqrt()))

    quantize_blockwise(model, calib, prune_block, f"Wanda {spec.amount}", progress)
    return masks


def storage(variant: "str | Variant") -> str:
    """How ``variant``'s weights are stored, for tables that report bytes honestly: ``pruned shapes`` (structured:
    smaller matrices), ``dense zeros`` (unstructured and N:M: the zeros are stored, see the module docstring),
    ``dense`` (no pruning)."""
    if not Variant.parse(variant).name.startswith("prune-"):
        return "dense"
    return "pruned shapes" if PruneSpec.of(variant).structured else "dense zeros"


def sparsity(model: nn.Module) -> float:
    """Share of exact zeros among the decoder-block linear weights."""
    layers = block_linears(model).values()
    return sum(int((m.weight == 0).sum()) for m in layers) / sum(m.weight.numel() for m in layers)


# ---------------------------------------------------------------- structured: shapes change
def _llama_layers(model: nn.Module) -> nn.ModuleList:
    layers = getattr(getattr(model, "model", None), "layers", None)
    ok = isinstance(layers, nn.ModuleList) and all(
        hasattr(layer, "self_attn") and hasattr(layer, "mlp")
        and all(hasattr(layer.self_attn, p) for p in ("q_proj", "k_proj", "v_proj", "o_proj"))
        and all(hasattr(layer.mlp, p) for p in ("gate_proj", "up_proj", "down_proj")) for layer in layers)
    if not ok:
        raise VariantError("structured pruning here knows Llama-style models (model.layers.*.self_attn.q/k/v/o_proj, "
                           "mlp.gate/up/down_proj); use prune-magnitude-* or prune-wanda-* for this one")
    return layers


def kept_channels(intermediate: int, percent: float) -> int:
    """MLP channels kept per block: the requested share, rounded to a multiple of 64 where the width is."""
    align = 64 if intermediate % 64 == 0 and intermediate >= 128 else 1
    kept = round(intermediate * (1 - percent / 100) / align) * align
    return min(max(kept, align), intermediate)


def kept_kv_groups(kv_heads: int, percent: float, name: str = "prune-heads") -> int:
    """Key/value groups kept per block. A group is one key/value head with the query heads that read it
    (grouped-query attention; under multi-head attention every head is its own group), so removing a
    group shrinks q/k/v/o and the KV cache alike."""
    if kv_heads == 1:
        raise VariantError(f"{name}: this model has a single key/value head (multi-query attention), so removing a "
                           "group removes all attention; prune MLP channels or depth instead (prune-mlp-25%, "
                           "prune-depth-33%)")
    drop = round(kv_heads * percent / 100)
    if not 0 < drop < kv_heads:
        raise VariantError(f"{name}: with {kv_heads} key/value head groups, {percent:g}% removes "
                           f"{'no group' if drop == 0 else 'every group'}; choose a share that removes 1 to "
                           f"{kv_heads - 1} of them (one group is {100 / kv_heads:.1f}%)")
    return kv_heads - drop


def dropped_layers_count(layers: int, percent: float, name: str = "prune-depth") -> int:
    drop = round(layers * percent / 100)
    if not 0 < drop < layers:
        raise VariantError(f"{name}: {percent:g}% of {layers} layers removes {drop}; choose a share that removes "
                           f"1 to {layers - 1} layers (one layer is {100 / layers:.1f}%)")
    return drop


def _config_dims(config) -> tuple[int, int, int]:
    heads = config.num_attention_heads
    return heads, getattr(config, "num_key_value_heads", None) or heads, \
        getattr(config, "head_dim", None) or config.hidden_size // heads


def pruned_config(config, variant: "str | Variant"):
    """The config of ``variant``'s pruned model, from the original config alone. The registry entries hand it
    to the planner (``held_config``), so ``plan.weight_bytes(c, v)`` prices it exactly; pass the original
    config there, not this one. Unstructured variants keep the config."""
    spec, name = PruneSpec.of(variant), Variant.parse(variant).name
    cfg = copy.deepcopy(load_config(config))
    if spec.method == "mlp":
        cfg.intermediate_size = kept_channels(cfg.intermediate_size, spec.percent)
    elif spec.method == "heads":
        heads, kv, head_dim = _config_dims(cfg)
        kept = kept_kv_groups(kv, spec.percent, name)
        cfg.head_dim = head_dim
        cfg.num_attention_heads, cfg.num_key_value_heads = kept * (heads // kv), kept
    elif spec.method == "depth":
        drop = dropped_layers_count(cfg.num_hidden_layers, spec.percent, name)
        cfg.num_hidden_layers -= drop
        if getattr(cfg, "layer_types", None):
            cfg.layer_types = cfg.layer_types[: cfg.num_hidden_layers]
    return cfg


def _sliced(linear: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Linear:
    weight = linear.weight.detach()
    weight = weight[rows] if rows is not None else weight
    weight = weight[:, cols] if cols is not None else weight
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=linear.bias is not None,
                    device=weight.device, dtype=weight.dtype)
    new.weight.data.copy_(weight)
    if linear.bias is not None:
        new.bias.data.copy_(linear.bias.detach()[rows] if rows is not None else linear.bias.detach())
    return new


def _input_norms(model: nn.Module, names: list[str], calib: torch.Tensor) -> dict[str, torch.Tensor]:
    """``||X_j||_2`` over the calibration tokens of each named linear's input feature j (one pass)."""
    sums: dict[str, torch.Tensor] = {}
    collect_inputs(model, names, calib, lambda n, x: sums.__setitem__(
        n, sums[n] + (x * x).sum(0) if n in sums else (x * x).sum(0)))
    return {n: s.sqrt() for n, s in sums.items()}


def _output_importance(linear: nn.Linear, input_norm: torch.Tensor) -> torch.Tensor:
    """Per input feature j: ``||X_j|| * ||W[:, j]||``, the norm of what feature j adds to the output."""
    return input_norm.to(linear.weight.device) * linear.weight.detach().float().norm(dim=0)


@torch.no_grad()
def prune_mlp_channels(model: nn.Module, percent: float, calib: torch.Tensor) -> list[list[int]]:
    """Remove the least important MLP channels of every block (same count each); returns the kept indices."""
    layers = _llama_layers(model)
    prefix = _prefix(model, layers)
    names = [f"{prefix}.{i}.mlp.down_proj" for i in range(len(layers))]
    norms = _input_norms(model, names, calib)
    kept = kept_channels(model.config.intermediate_size, percent)
    chosen = []
    for name, layer in zip(names, layers):
        mlp = layer.mlp
        keep = _output_importance(mlp.down_proj, norms[name]).topk(kept).indices.sort().values
        mlp.gate_proj, mlp.up_proj = _sliced(mlp.gate_proj, rows=keep), _sliced(mlp.up_proj, rows=keep)
        mlp.down_proj = _sliced(mlp.down_proj, cols=keep)
        mlp.intermediate_size = kept
        chosen.append(keep.tolist())
    model.config.intermediate_size = kept
    return chosen


@torch.no_grad()
def prune_attention_heads(model: nn.Module, percent: float, calib: torch.Tensor) -> list[list[int]]:
    """Remove the least important key/value groups (a KV head with its query heads) of every block, from
    q/k/v/o alike; returns the kept groups. A group's importance is the sum over its query heads' channels
    of ``||X_j|| * ||W_o[:, j]||``, what it adds to the residual stream."""
    layers = _llama_layers(model)
    prefix = _prefix(model, layers)
    heads, kv, head_dim = _config_dims(model.config)
    per_group, kept = heads // kv, kept_kv_groups(kv, percent)
    names = [f"{prefix}.{i}.self_attn.o_proj" for i in range(len(layers))]
    norms = _input_norms(model, names, calib)
    chosen = []
    for name, layer in zip(names, layers):
        attn = layer.self_attn
        score = _output_importance(attn.o_proj, norms[name]).reshape(kv, per_group * head_dim).sum(-1)
        groups = score.topk(kept).indices.sort().values
        dims = torch.arange(head_dim, device=groups.device)
        kv_rows = (groups[:, None] * head_dim + dims).flatten()
        q_heads = (groups[:, None] * per_group + torch.arange(per_group, device=groups.device)).flatten()
        q_rows = (q_heads[:, None] * head_dim + dims).flatten()
        attn.q_proj, attn.o_proj = _sliced(attn.q_proj, rows=q_rows), _sliced(attn.o_proj, cols=q_rows)
        attn.k_proj, attn.v_proj = _sliced(attn.k_proj, rows=kv_rows), _sliced(attn.v_proj, rows=kv_rows)
        chosen.append(groups.tolist())  # num_key_value_groups (query heads per KV head) is unchanged
    model.config.head_dim = head_dim
    model.config.num_attention_heads, model.config.num_key_value_heads = kept * per_group, kept
    return chosen


@torch.no_grad()
def block_similarities(model: nn.Module, calib: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """Mean cosine similarity between the hidden states entering boundary i and boundary j, [L+1, L+1]
    (boundary i = the input of block i; boundary L = the last block's output), over the calibration tokens."""
    layers = _llama_layers(model)
    states: list[torch.Tensor] = []

    def grab_input(module, args, kwargs):
        states.append((args[0] if args else kwargs["hidden_states"]).float())

    def grab_output(module, args, output):
        states.append((output[0] if isinstance(output, tuple) else output).float())

    handles = [layer.register_forward_pre_hook(grab_input, with_kwargs=True) for layer in layers]
    handles.append(layers[-1].register_forward_hook(grab_output))
    count = len(layers) + 1
    sims, batches = torch.zeros(count, count), 0
    device = next(model.parameters()).device
    try:
        for start in range(0, len(calib), batch_size):
            states.clear()
            model(input_ids=calib[start : start + batch_size].to(device), use_cache=False)
            flat = torch.stack([s.reshape(-1, s.shape[-1]) for s in states])  # [L+1, tokens, hidden]
            unit = F.normalize(flat, dim=-1)
            sims += torch.einsum("itd,jtd->ij", unit, unit).cpu() / unit.shape[1]
            batches += 1
    finally:
        for handle in handles:
            handle.remove()
    return sims / batches


def layers_to_drop(similarities: torch.Tensor, drop: int, rule: str = "bi") -> list[int]:
    """Which blocks to remove: ``bi`` the ``drop`` of lowest Block Influence 1 - cos(in_i, out_i) (Men et al.
    2024); ``angular`` the contiguous run l..l+drop-1 of least angular distance arccos(cos(in_l, out_l+drop-1)) / pi
    (Gromov et al. 2024)."""
    count = similarities.shape[0] - 1
    if rule == "bi":
        influence = 1 - torch.tensor([float(similarities[i, i + 1]) for i in range(count)])
        return sorted(influence.argsort(stable=True)[:drop].tolist())
    if rule == "angular":
        distance = [math.acos(max(-1.0, min(1.0, float(similarities[i, i + drop])))) / math.pi
                    for i in range(count - drop + 1)]
        start = min(range(len(distance)), key=distance.__getitem__)
        return list(range(start, start + drop))
    raise VariantError(f"rule={rule!r} for depth pruning; choose bi (Men et al.) or angular (Gromov et al.)")


@torch.no_grad()
def prune_depth(model: nn.Module, percent: float, calib: torch.Tensor, rule: str = "bi") -> list[int]:
    """Remove whole decoder layers; returns the indices (in the original model) that were removed."""
    layers = _llama_layers(model)
    drop = layers_to_drop(block_similarities(model, calib), dropped_layers_count(len(layers), percent), rule)
    kept = [layer for i, layer in enumerate(layers) if i not in drop]
    model.model.layers = nn.ModuleList(kept)
    for i, layer in enumerate(kept):  # the KV cache is indexed by layer_idx
        layer.self_attn.layer_idx = i
    model.config.num_hidden_layers = len(kept)
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = [t for i, t in enumerate(model.config.layer_types) if i not in drop]
    return drop


def _prefix(model: nn.Module, layers: nn.ModuleList) -> str:
    first = next(n for n in block_linears(model) if model.get_submodule(split_block(n)[0]) is layers[0])
    return split_block(first)[0].rsplit(".", 1)[0]


# ---------------------------------------------------------------- the whole job
def prune_model(model: nn.Module, variant: "str | Variant", tokenizer, progress: bool = True) -> dict:
    """Prune ``model`` in place as ``variant``'s pruning stage says (no distillation, no quantization).
    Returns what was chosen: ``masks`` (unstructured) or ``kept`` / ``dropped`` (structured)."""
    variant = Variant.parse(variant)
    spec = PruneSpec.of(variant)
    calib = variant_calibration_ids(variant, tokenizer) if spec.method != "magnitude" else None
    if spec.method in UNSTRUCTURED:
        return {"masks": prune_unstructured(model, spec, calib, progress)}
    if spec.method == "mlp":
        return {"kept": prune_mlp_channels(model, spec.percent, calib)}
    if spec.method == "heads":
        return {"kept": prune_attention_heads(model, spec.percent, calib)}
    return {"dropped": prune_depth(model, spec.percent, calib, str(variant.option("rule", "bi")))}


def distill_settings(variant: Variant) -> DistillSettings:
    fields = DistillSettings.__dataclass_fields__
    return DistillSettings(**{k: v for k, v in variant.options if k in fields})


def _checkpoint_dir(source: str, variant: Variant) -> Path:
    spec = PruneSpec.of(variant)
    options = {k: v for k, v in variant.options if k not in GUARD_OPTIONS and k != "damp"}
    key = hashlib.sha256(json.dumps([model_key(source), spec.stage, options, CHECKPOINT_FORMAT],
                                    sort_keys=True).encode()).hexdigest()
    return work_dir() / "pruned" / key[:16]


def pruned_checkpoint(model: str, variant: "str | Variant", tokenizer=None, progress: bool = True) -> Path:
    """The folder of ``variant``'s pruned (and, with ``+distill``, distilled) fp32 model: a plain
    transformers checkpoint (config, safetensors, tokenizer) plus ``pruning.json`` (what was removed,
    the distillation history). Made on first use through the load guard, then reused."""
    variant = Variant.parse(variant)
    spec = PruneSpec.of(variant)
    source = resolve_source(model)
    folder = _checkpoint_dir(source, variant)
    if (folder / "pruning.json").exists():
        return folder
    tokenizer = tokenizer or load_tokenizer(source)
    device = device_of(variant)
    torch.manual_seed(int(variant.option("seed", 0)))
    student = guarded_fp32_load(variant, source, device, what="fine-tune" if spec.distill else "prune")
    chosen = prune_model(student, variant, tokenizer, progress)
    record = {"source": source, "variant": spec.stage, "options": dict(variant.options),
              "sparsity": sparsity(student),
              **{k: v for k, v in chosen.items() if k != "masks"}}
    if spec.distill:
        settings = distill_settings(variant)
        teacher = load_model(source, device_map={"": device}, dtype=torch.float32)  # admitted above, as training
        for p in teacher.parameters():
            p.requires_grad_(False)
        blocks = {split_block(n)[0] for n in block_linears(student)}
        for n, p in student.named_parameters():
            p.requires_grad_(any(n.startswith(b + ".") for b in blocks))
        trainable = [p for p in student.parameters() if p.requires_grad]
        masks = {student.get_submodule(n): m for n, m in chosen.get("masks", {}).items()}

        def keep_masks() -> None:  # unstructured zeros stay zero while the rest learns
            for linear, mask in masks.items():
                linear.weight.mul_(mask)

        history = kl_distill(teacher, student, trainable, tokenizer, settings, desc=f"distill {spec.stage}",
                             progress=progress, after_step=keep_masks if masks else None)
        for p in student.parameters():
            p.requires_grad_(False)
        del teacher
        record.update(distill=asdict(settings), history=history.to_dict("records"),
                      kl_won_per_minute=kl_per_minute(history), sparsity=sparsity(student))

    def write(staging: Path) -> None:
        student.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        (staging / "pruning.json").write_text(json.dumps(record, indent=1))

    staged(folder, write)
    return folder


def pruning_record(model: str, variant: "str | Variant") -> dict:
    """What the pruned checkpoint records (made on first use): removed layers / kept channels, sparsity,
    and for ``+distill`` the training history and ``kl_won_per_minute``."""
    return json.loads((pruned_checkpoint(model, variant, progress=False) / "pruning.json").read_text())


# ---------------------------------------------------------------- registry entries
def _held_config(variant: Variant, config):
    """What the planner prices: the pruned config of a structured variant, the config itself otherwise."""
    return pruned_config(config, variant) if PruneSpec.of(variant).structured else config


def _pruned_linear_bytes(variant: Variant, out_f: int, in_f: int, bias: bool, dense: str) -> int:
    """A linear of the pruned shape: dense fp32 (zeros are stored), or as the scheme's own registry entry
    prices it."""
    scheme = variant.field("scheme")
    if scheme is None:
        return dense_linear_bytes("fp32")(variant, out_f, in_f, bias, dense)
    scheme = Variant.parse(scheme)
    return scheme.entry.linear_bytes(scheme, out_f, in_f, bias, dense)


_SUMMARY = ("pruning: magnitude|wanda by % or NofM per row (stored dense), mlp|heads|depth structured (smaller "
            "config){}; +<scheme> quantizes the rest (options samples, seq_len, seed, rule=bi|angular{})")


@register(_STAGE + r"\+distill" + _SCHEME, "pytorch",
          _SUMMARY.format(", then a seeded KL distillation from the unpruned model", ", steps, lr, batch_size..."),
          ("prune-mlp-25%+distill", "prune-wanda-50%+distill+int4-g128"), linear_bytes=_pruned_linear_bytes,
          options=CALIBRATION_OPTIONS + DISTILL_OPTIONS, load="training", dense=lambda v, ckpt: "fp32",
          held_config=_held_config)
@register(_STAGE + _SCHEME, "pytorch", _SUMMARY.format("", ""),
          ("prune-magnitude-50%", "prune-wanda-50%", "prune-wanda-2of4", "prune-mlp-25%", "prune-heads-50%",
           "prune-depth-33%", "prune-wanda-50%+int4-g128", "prune-mlp-25%+int4-g128"),
          linear_bytes=_pruned_linear_bytes, options=CALIBRATION_OPTIONS, dense=lambda v, ckpt: "fp32",
          held_config=_held_config)
def build_pruned(variant: Variant, source: str, tokenizer):
    spec = PruneSpec.of(variant)
    device = device_of(variant)
    admit(variant, source, device, what="fine-tune" if spec.distill else "prune")
    if spec.structured or spec.distill:  # a new checkpoint: it loads like any other model
        folder = pruned_checkpoint(source, variant, tokenizer)
        model = guarded_load(Variant.parse("fp32"), str(folder), device, dtype=torch.float32)
    else:
        model = guarded_fp32_load(variant, source, device)
        prune_model(model, variant, tokenizer)
    if spec.scheme:
        apply_scheme(model, Variant.parse(spec.scheme), tokenizer, calib_from=variant)
    return TorchRunner(str(variant), model, tokenizer)
