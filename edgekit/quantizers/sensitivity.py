"""Layer sensitivity: which linear layers lose the most when quantized on their own.

One decoder-block linear layer (``by="layer"``), or one module type across every block
(``by="module"``, e.g. all ``mlp.down_proj``), is quantized to a chosen scheme while every
other weight stays at the fp32 baseline; the KL divergence of its next-token distributions
from the baseline's on the eval text (with :mod:`edgekit.measure.quality`'s per-window standard
error) is that layer's sensitivity. This is the one-at-a-time ("leave the rest at full
precision") analysis that mixed-precision methods start from — the Hugging Face /
PyTorch quantization guides' advice to keep sensitive layers at higher precision, and the
per-layer sensitivity study of HAWQ (Dong et al. 2019), measured here directly by KL
instead of a Hessian proxy. A layer "quantized" with the ``fp32`` scheme is left unchanged,
so its sensitivity is exactly zero: a check that the sweep restores every layer it touches.

The whole model is held in fp32 (it is scored once per target), so the guard prices the ranking
as the fp32 model whatever the scheme, and refuses it, with that reason, where that does not fit
(a 7B on a 24 GB machine): a layer-by-layer ranking would not measure the same whole-model KL.

Schemes: ``fp32`` (unchanged), RTN ``int{2,3,4,8}-gN`` and ``gptq-int{2,3,4}-gN`` (each layer's
Hessian from one calibration pass of the unquantized model, which is exact here since the
rest of the model stays at baseline). Results go to the store with ``kind="sensitivity"``.
:func:`ranking` caches a calibration-split ranking under the work folder for the
``mixed-*`` variants.
"""
from __future__ import annotations

import json

import pandas as pd
from torch import nn

from edgekit.core.errors import VariantError
from edgekit.core.paths import SAMPLES, SEQ_LEN, bos_token_id, cache_key, calibration_ids, eval_token_ids, work_dir
from edgekit.core.progress import tqdm
from edgekit.measure.quality import EvalSettings, score
from edgekit.measure.store import Result, ResultStore, new_run_id
from edgekit.memory.guard import guarded_fp32_load
from edgekit.models.layout import block_linears, replace_module, split_block
from edgekit.models.load import load_tokenizer, model_key, resolve_source
from edgekit.models.runner import TorchRunner
from edgekit.quantizers.calibrated import gptq_quantize
from edgekit.quantizers.calibration import hessians
from edgekit.quantizers.packed import PackedLinear
from edgekit.variants.registry import Variant

SENSITIVITY_SETTINGS = EvalSettings(context=256, stride=128, max_tokens=2048, batch_size=8)
# Why the ranking is priced as the fp32 model whatever the scheme, and refused rather than streamed
WHOLE_MODEL_ONLY = ("The ranking scores the whole fp32 model once per layer, the rest at baseline; layer by layer "
                    "it would not measure the same whole-model KL (and would read every shard once per layer). "
                    "Rank a model that fits here, or use gptq-*/awq-* (mixed-* variants need this ranking).")


def _quantizer(scheme: str, model: nn.Module, tokenizer, samples: int, seq_len: int):
    """A function ``(name, linear) -> module`` that quantizes one layer to ``scheme``."""
    if scheme == "fp32":
        return lambda name, linear: linear
    variant = Variant.parse(scheme)
    method = variant.field("method")
    if variant.family != "pytorch" or variant.bits is None or method not in (None, "gptq"):
        raise VariantError(f"sensitivity supports fp32, RTN int{{2,3,4,8}}-gN and gptq-int{{2,3,4}}-gN schemes, "
                           f"not {scheme!r}")
    if method is None:
        return lambda name, linear: PackedLinear.from_linear(linear, variant.bits, variant.group_size)
    H = hessians(model, list(block_linears(model)), calibration_ids(tokenizer, samples, seq_len))

    def gptq(name, linear):
        codes, scale, zero = gptq_quantize(linear.weight, H[name], variant.bits, variant.group_size)
        return PackedLinear.from_codes(codes, scale, zero, variant.bits, variant.group_size, linear.bias)
    return gptq


def targets(model: nn.Module, by: str) -> dict[str, list[str]]:
    """What is quantized at a time: each layer, or each module type across all blocks."""
    names = list(block_linears(model))
    if by == "layer":
        return {n: [n] for n in names}
    if by == "module":
        groups: dict[str, list[str]] = {}
        for n in names:
            groups.setdefault(split_block(n)[1], []).append(n)
        return groups
    raise VariantError(f"by={by!r}; choose 'layer' (one linear at a time) or 'module' (one type across blocks)")


def layer_sensitivity(model: str = "default", scheme: str = "int4-g128", by: str = "layer",
                      eval_text: str = "eval", settings: EvalSettings = SENSITIVITY_SETTINGS,
                      calibration_samples: int = SAMPLES, calibration_seq_len: int = SEQ_LEN,
                      store: ResultStore | None = None, progress: bool = True) -> pd.DataFrame:
    """KL (± se), top-1 agreement and Δppl of quantizing each target alone; one row per target."""
    source = resolve_source(model)
    tokenizer = load_tokenizer(source)
    ids = eval_token_ids(tokenizer, eval_text)
    net = guarded_fp32_load("fp32", source, what="rank the layers of", advice=WHOLE_MODEL_ONLY)
    runner = TorchRunner("fp32", net, tokenizer)
    quantize = _quantizer(scheme, net, tokenizer, calibration_samples, calibration_seq_len)
    base = score(runner, ids, settings, keep_logprobs=True, progress=False)
    run_settings = {"scheme": scheme, "by": by, "eval_text": eval_text, "context": settings.context,
                    "stride": settings.stride, "max_tokens": settings.max_tokens,
                    "calibration_samples": calibration_samples, "calibration_seq_len": calibration_seq_len,
                    "bos_token_id": bos_token_id(tokenizer)}
    run_id = new_run_id()
    rows = []
    for target, names in tqdm(targets(net, by).items(), desc=f"sensitivity {scheme}", unit="target",
                              disable=not progress):
        originals = {n: net.get_submodule(n) for n in names}
        try:
            for n, linear in originals.items():
                replace_module(net, n, quantize(n, linear))
            metrics = score(runner, ids, settings, baseline=base, progress=False).against(base)
        finally:
            for n, linear in originals.items():
                replace_module(net, n, linear)
        block, module = split_block(target) if by == "layer" else ("all", target)
        metrics.update(target=target, block=block.rsplit(".", 1)[-1] if by == "layer" else block, module=module,
                       params=sum(originals[n].weight.numel() for n in names))
        rows.append(metrics)
        if store is not None:
            store.add(Result(str(model), f"{scheme}@{target}", metrics, run_settings, kind="sensitivity",
                             run_id=run_id))
    frame = pd.DataFrame(rows)
    return frame[["target", "block", "module", "kl_divergence", "kl_divergence_se", "top1_agreement",
                  "delta_ppl_pct", "delta_ppl_pct_ci95", "params"]]


def ranked(frame: pd.DataFrame) -> pd.DataFrame:
    """Targets from most to least sensitive (highest KL first)."""
    return frame.sort_values("kl_divergence", ascending=False, kind="stable").reset_index(drop=True)


def heatmap_table(frame: pd.DataFrame) -> pd.DataFrame:
    """A per-layer sensitivity frame as block (rows) × module (columns) KL."""
    table = frame.pivot(index="block", columns="module", values="kl_divergence")
    return table.loc[sorted(table.index, key=int)]


def ranking(model: str, scheme: str, tokens: int = 4096, progress: bool = True) -> list[str]:
    """Layer names, most sensitive first, to ``scheme`` on the calibration split; cached under the work folder.

    The ranking is measured on calibration text, never on the eval split the variants are
    judged on.
    """
    source = resolve_source(model)
    key = cache_key(model_key(source), scheme, tokens, bos_token_id(load_tokenizer(source)))  # windows' BOS rule
    cache = work_dir() / "sensitivity" / f"{key}.json"
    if cache.exists():
        return json.loads(cache.read_text())["ranking"]
    settings = EvalSettings(context=256, stride=128, max_tokens=tokens, batch_size=8)
    frame = ranked(layer_sensitivity(source, scheme, "layer", "calibration", settings, progress=progress))
    order = frame["target"].tolist()
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"model": source, "scheme": scheme, "tokens": tokens, "ranking": order,
                                 "kl_divergence": frame["kl_divergence"].tolist()}, indent=1))
    return order
