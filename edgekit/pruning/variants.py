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

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from edgekit.core.caches import cache_build
from edgekit.core.paths import variant_calibration_ids, work_dir
from edgekit.memory.guard import admit, guarded_fp32_load, guarded_load
from edgekit.models.layout import block_linears, split_block
from edgekit.models.load import load_model, load_tokenizer, model_key, resolve_source
from edgekit.models.runner import TorchRunner
from edgekit.pruning.masks import prune_unstructured, sparsity
from edgekit.pruning.spec import (
    CALIBRATION_OPTIONS,
    DISTILL_OPTIONS,
    SCHEME_PATTERN,
    STAGE_PATTERN,
    UNSTRUCTURED,
    PruneSpec,
)
from edgekit.pruning.structured import prune_attention_heads, prune_depth, prune_mlp_channels, pruned_config
from edgekit.quantizers.calibrated import apply_scheme
from edgekit.quantizers.distill import DistillSettings, kl_distill, kl_per_minute
from edgekit.variants.registry import GUARD_OPTIONS, Variant, dense_linear_bytes, device_of, register

# Part of a pruned checkpoint's key: raised when a method changes what it removes, so stale checkpoints
# are not reused (2: heads pruning removes whole key/value groups)
CHECKPOINT_FORMAT = 2


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

    cache_build(folder, write)
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


@register(STAGE_PATTERN + r"\+distill" + SCHEME_PATTERN, "pytorch",
          _SUMMARY.format(", then a seeded KL distillation from the unpruned model", ", steps, lr, batch_size..."),
          ("prune-mlp-25%+distill", "prune-wanda-50%+distill+int4-g128"), linear_bytes=_pruned_linear_bytes,
          options=CALIBRATION_OPTIONS + DISTILL_OPTIONS, load="training", dense=lambda v, ckpt: "fp32",
          held_config=_held_config)
@register(STAGE_PATTERN + SCHEME_PATTERN, "pytorch", _SUMMARY.format("", ""),
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
