"""The ONNX variants: export, quantize, compile into a verified artifact, run on ONNX Runtime.

``onnx-fp32``, ``onnx-int8`` (dynamic, per-channel), ``onnx-int8-static`` (QDQ calibrated
on the ``calibration`` split) and ``onnx-int4-g32|g64|g128`` / ``onnx-int8-g<N>`` (weight-only
MatMulNBits, 4 or 8 bits per weight in blocks of N input channels) join the same
registry as the PyTorch variants, so ``edgekit compare --variants fp32,onnx-int8`` measures
them with the same code into the same table. The fp32 and int8 variants are built along the
path the deployment guides describe — PyTorch → ONNX (:mod:`edgekit.runtimes.onnx.export`)
→ quantized ONNX (:mod:`edgekit.runtimes.onnxruntime.quantize`); the MatMulNBits variants are written
from the checkpoint one weight at a time (:mod:`edgekit.runtimes.onnx.build`, the path that
fits a 7B) — then compiled for the target (:func:`edgekit.runtimes.onnxruntime.runner.compile_model`)
→ artifact with a manifest (:mod:`edgekit.artifacts.manifest`) — and loaded back through
:func:`~edgekit.runtimes.load_artifact`, which verifies every file first. The manifest records
the compiled model's logit parity with PyTorch fp32 where that reference fits this machine.

Options (after a colon): ``per_channel`` (int8), ``symmetric`` and ``accuracy_level`` (MatMulNBits,
default 4 = int8 compute), ``opt_level`` (graph optimisation: disable|basic|extended|all)
and ``provider`` (execution provider to compile for, e.g. ``OpenVINOExecutionProvider``).
The plain fp32 export of a model is cached once under ``work_dir()/onnx-exports``; each
variant's artifact under ``work_dir()/artifacts/<model key>/<variant>``.
"""
from __future__ import annotations

import tempfile
from functools import lru_cache
from pathlib import Path

import onnx
import onnxruntime as ort

from edgekit.artifacts.manifest import Manifest, copy_side_files, write_manifest
from edgekit.core.errors import PlanError
from edgekit.core.paths import begin_with_bos, eval_token_ids, work_dir
from edgekit.memory.guard import admit
from edgekit.models.load import load_tokenizer, model_key, resolve_source
from edgekit.quantizers.smoothquant import smoothed_folder
from edgekit.runtimes import build_runner, cached_manifest, load_artifact
from edgekit.runtimes.onnx.build import build_nbits_decoder, check_matmul_nbits, graph_bytes, matmul_nbits_bytes
from edgekit.runtimes.onnx.export import cached_export, parity, parity_batch
from edgekit.runtimes.onnx.files import MODEL_FILE
from edgekit.runtimes.onnxruntime.quantize import quantize_int8_dynamic, quantize_int8_static
from edgekit.runtimes.onnxruntime.runner import (
    ORTRunner,
    compile_model,
    model_opset,
    resolve_providers,
    self_test,
    session_options,
)
from edgekit.variants.registry import Variant, dense_linear_bytes, per_channel_int8_bytes, register

COMMON_OPTIONS = ("opt_level", "provider")
PARITY_TOKENS = 512

__all__ = ["export_artifact", "model_signature", "self_test"]


def _scheme(variant: Variant) -> str:
    """fp32, int8, int8-static, or nbits for the MatMulNBits graphs built from the checkpoint."""
    return "nbits" if variant.group_size else variant.name[len("onnx-"):]


def quantization_settings(variant: Variant) -> dict:
    """The quantization recipe a variant stands for, with its defaults filled in (goes into the manifest)."""
    scheme = _scheme(variant)
    if scheme == "fp32":
        return {"scheme": "none", "weight_dtype": "float32"}
    if scheme == "int8":
        return {"scheme": "dynamic int8 (onnxruntime quantize_dynamic)", "weight_dtype": "int8",
                "per_channel": bool(variant.option("per_channel", True)), "op_types": ["MatMul", "Gather"]}
    if scheme == "int8-static":
        return {"scheme": "static int8 QDQ (onnxruntime quantize_static, MinMax)", "weight_dtype": "int8",
                "activation_dtype": "uint8", "per_channel": bool(variant.option("per_channel", True)),
                "calibration": {"split": "calibration", "windows": 16, "tokens_per_window": 128}}
    return {"scheme": f"{variant.bits}-bit weight-only MatMulNBits", "weight_dtype": f"int{variant.bits}",
            "bits": variant.bits, "block_size": variant.group_size,
            "symmetric": bool(variant.option("symmetric", False)),
            "accuracy_level": int(variant.option("accuracy_level", 4))}


def _quantized_model(variant: Variant, settings: dict, source: str, work: Path) -> Path:
    """The quantized (not yet compiled) ONNX model of ``variant``, written under ``work``."""
    scheme = _scheme(variant)
    if scheme == "nbits":
        return build_nbits_decoder(source, work, settings["bits"], settings["block_size"], settings["symmetric"],
                                   settings["accuracy_level"])
    raw = cached_export(source)
    target = work / "quantized.onnx"
    if scheme == "fp32":
        return raw
    if scheme == "int8":
        return quantize_int8_dynamic(raw, target, per_channel=settings["per_channel"])
    tokenizer = load_tokenizer(source)
    cal = settings["calibration"]
    return quantize_int8_static(raw, target, eval_token_ids(tokenizer, "calibration").numpy(), settings["per_channel"],
                                  cal["windows"], cal["tokens_per_window"], tokenizer)


def model_signature(path: Path) -> dict:
    """Inputs and outputs of the ONNX model at ``path`` as ONNX Runtime names them (``tensor(float)``, dims
    or their symbols), read from the graph alone: no session, so a 7B's weights are not loaded for it."""
    graph = onnx.load(str(path), load_external_data=False).graph

    def describe(values) -> list[dict]:
        rows = []
        for v in values:
            tensor = v.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else d.dim_param if d.HasField("dim_param") else None
                    for d in tensor.shape.dim]
            rows.append({"name": v.name, "type": f"tensor({onnx.TensorProto.DataType.Name(tensor.elem_type).lower()})",
                         "shape": dims})
        return rows

    initializers = {t.name for t in graph.initializer}
    return {"inputs": describe(v for v in graph.input if v.name not in initializers),
            "outputs": describe(graph.output)}


class _LogitsOf:
    """A Runner stand-in that replays logits computed once (the PyTorch reference of a model)."""

    def __init__(self, name: str, logits):
        self.name, self._logits = name, logits

    def logits(self, input_ids):
        return self._logits


@lru_cache(maxsize=2)
def _pytorch_reference(key: str, source: str):
    """Eval token ids and PyTorch fp32 logits on them, computed once per model version and process."""
    reference = build_runner("fp32", source)
    try:
        ids = begin_with_bos(parity_batch(eval_token_ids(reference.tokenizer, "eval")[:PARITY_TOKENS]),
                             reference.tokenizer)  # rows as the model sees text (Gemma: <bos> first)
        return ids, reference.logits(ids)
    finally:
        reference.close()


def _parity_against_pytorch(source: str, folder: Path) -> dict:
    """Max |Δlogit| and top-1 agreement of the compiled model against PyTorch fp32 on eval tokens
    (skipped, and said so, where the fp32 model does not fit this machine: a 7B's ``compare`` measures
    KL against its baseline instead)."""
    try:
        ids, logits = _pytorch_reference(model_key(source), source)
    except PlanError:
        return {"parity_reference": "skipped: PyTorch fp32 does not fit this machine"}
    candidate = ORTRunner(folder)
    try:
        return parity(_LogitsOf("fp32", logits), candidate, ids)
    finally:
        candidate.close()


def export_artifact(variant: Variant, source: str, out_dir: str | Path) -> Manifest:
    """Export, quantize and compile ``variant`` of ``source`` into the (staging) folder ``out_dir``."""
    variant = Variant.parse(variant)
    admit(variant, source, what="export")
    settings = quantization_settings(variant)
    out_dir = Path(out_dir)
    level = str(variant.option("opt_level", "all"))
    providers = [variant.option("provider")] if variant.option("provider") else None
    session_options(level)  # refuse a bad level before any work
    if _scheme(variant) == "nbits":
        check_matmul_nbits(settings["block_size"], settings["accuracy_level"])
    with tempfile.TemporaryDirectory(prefix="edgekit-quantize-", dir=work_dir()) as work:
        quantized = _quantized_model(variant, settings, source, Path(work))
        compile_model(quantized, out_dir / MODEL_FILE, level, providers)
    copy_side_files(source, out_dir)
    signature = model_signature(out_dir / MODEL_FILE)
    evaluation = _parity_against_pytorch(source, out_dir)
    return write_manifest(out_dir, variant=str(variant), runtime="onnxruntime", runtime_version=ort.__version__,
                          model=resolve_source(source), quantization=settings, signature=signature,
                          opset=model_opset(out_dir / MODEL_FILE), evaluation=evaluation,
                          runtime_settings={"graph_optimization_level": level,
                                            "providers": resolve_providers(providers)},
                          extra={"compile": {"graph_optimization_level": level,
                                             "providers": resolve_providers(providers),
                                             "onnxruntime": ort.__version__}})


def _build(variant: Variant, source: str, tokenizer):
    return load_artifact(cached_manifest(variant, source))


def _nbits_bytes(variant: Variant, out_f: int, in_f: int, bias: bool, dense: str) -> int:
    settings = quantization_settings(variant)
    return matmul_nbits_bytes(out_f, in_f, bias, variant.bits, variant.group_size, settings["symmetric"])


def _nbits_graph_bytes(variant: Variant, config) -> dict[str, int]:
    """The MatMulNBits graph as :func:`build_nbits_decoder` writes it (fp32 embeddings), priced per module."""
    return graph_bytes(config, variant.bits, variant.group_size, quantization_settings(variant)["symmetric"])


_ENTRY = dict(load="export", dense=lambda variant, checkpoint: "fp32", exporter=export_artifact)
register(r"onnx-fp32", "onnxruntime", "ONNX Runtime, optimum export, graph-optimised fp32", ("onnx-fp32",),
         linear_bytes=dense_linear_bytes("fp32"), options=COMMON_OPTIONS, **_ENTRY)(_build)
register(r"onnx-int8", "onnxruntime", "ONNX Runtime dynamic int8 (option per_channel=true)", ("onnx-int8",),
         linear_bytes=per_channel_int8_bytes, options=("per_channel", *COMMON_OPTIONS), **_ENTRY)(_build)
register(r"onnx-int8-static", "onnxruntime", "ONNX Runtime static int8 QDQ calibrated on the calibration split",
         ("onnx-int8-static",), linear_bytes=per_channel_int8_bytes, options=("per_channel", *COMMON_OPTIONS),
         **_ENTRY)(_build)
register(r"onnx-int(?P<bits>[48])-g(?P<group_size>\d+)", "onnxruntime",
         "ONNX Runtime MatMulNBits 4- or 8-bit weight-only, built from the checkpoint tensor by tensor (options "
         "symmetric=false, accuracy_level=4)", ("onnx-int4-g32", "onnx-int4-g64", "onnx-int4-g128", "onnx-int8-g128"),
         linear_bytes=_nbits_bytes, graph_bytes=_nbits_graph_bytes,
         options=("symmetric", "accuracy_level", *COMMON_OPTIONS), **{**_ENTRY, "load": "streamed-export"})(_build)


@register(r"sq-(?P<inner>onnx-int8(?:-static)?)", "onnxruntime",
          "SmoothQuant folded into the weights (option alpha), then ONNX Runtime int8 dynamic or static QDQ",
          ("sq-onnx-int8", "sq-onnx-int8-static"), linear_bytes=per_channel_int8_bytes,
          options=("alpha", "per_channel", "opt_level", "provider"), load="export",
          dense=lambda variant, checkpoint: "fp32", defaults={"alpha": 0.5})
def build_smoothed(variant: Variant, source: str, tokenizer):
    inner = Variant.parse(variant.field("inner")).with_options(**{k: v for k, v in variant.options if k != "alpha"})
    return build_runner(inner, str(smoothed_folder(variant, source)), tokenizer)
