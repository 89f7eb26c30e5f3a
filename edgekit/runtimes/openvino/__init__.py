"""OpenVINO as a compile target: an ONNX model read into OpenVINO IR, a Runner.

``ov-int8`` follows OpenVINO's "Weight Compression" guide (NNCF ``compress_weights``,
data-free): the plain fp32 ONNX export of the model (the one the ONNX variants start from,
:func:`edgekit.runtimes.onnxruntime.cached_export`) is read with ``openvino.Core.read_model``
and its weights compressed to int8 per output channel. ``ov-int4-g<N>`` and ``ov-int8-g<N>``
start from the 4- or 8-bit graph that :mod:`edgekit.runtimes.onnx.build` writes from the
checkpoint one weight at a time (MatMulNBits blocks of ``N`` input channels, the LM head
included; embeddings int8 per row, as NNCF's backup mode keeps them; int4 symmetric and int8
asymmetric unless ``sym=`` says otherwise, as NNCF's modes default): OpenVINO's ONNX reader
turns each MatMulNBits into its own compressed-weight pattern (u4/i4 or u8 constants, a scale
per group), which the CPU plugin runs as compressed weights. That is the path that fits a 7B:
NNCF would need the fp32 graph in memory first. Either way the result is saved as OpenVINO IR (``openvino_model.xml`` +
``.bin``) in an artifact folder with the edgekit manifest. The artifact is compiled for a device at load time:
``CPU``, or
``GPU`` / ``NPU`` where OpenVINO sees one; a device that is not present falls back to the
CPU with a :class:`DeviceFallbackWarning`, never silently.

Variants: ``ov-int8``, ``ov-int4-g32``, ``ov-int4-g128``, ``ov-int8-g128`` (any ``ov-int4|8-g<N>``). Options:
``sym=true|false`` (int4 defaults to symmetric, int8 to asymmetric, as NNCF's modes do),
``device=CPU|GPU|NPU|AUTO``, ``threads=N`` (default: PyTorch's thread count, so runtimes
compare on the same cores).

Decoding keeps the KV cache as explicit model inputs and outputs (the ONNX export's
``past_key_values.*`` / ``present.*``), alternating two infer requests so that one
request's ``present`` tensors feed the other's ``past`` inputs without a copy.
"""
from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from edgekit.artifacts.cache import artifact_name
from edgekit.artifacts.manifest import Manifest, artifact_loader, copy_side_files, write_manifest
from edgekit.core.paths import work_dir
from edgekit.core.quiet import nncf_statistics
from edgekit.memory.guard import admit, admit_artifact
from edgekit.models.load import folder_tokenizer
from edgekit.models.sampling import Pick, choose
from edgekit.runtimes import cached_manifest, load_artifact
from edgekit.runtimes.onnx.build import build_nbits_decoder, check_matmul_nbits, graph_bytes, matmul_nbits_bytes
from edgekit.runtimes.onnx.export import cached_export
from edgekit.variants.registry import Variant, per_channel_int8_bytes, register

MODEL_XML = "openvino_model.xml"
MODEL_BIN = "openvino_model.bin"


class DeviceFallbackWarning(UserWarning):
    """The requested OpenVINO device is not present; the model runs on the CPU instead."""


def _core():
    import openvino as ov

    return ov.Core()


def select_device(requested: str, available: list[str] | None = None) -> str:
    """``requested`` if OpenVINO sees it (``GPU`` matches ``GPU.0``...), else ``CPU`` with a warning."""
    requested = str(requested).upper()
    available = _core().available_devices if available is None else available
    if requested == "AUTO" or any(d == requested or d.split(".")[0] == requested for d in available):
        return requested
    warnings.warn(f"OpenVINO device {requested} is not present here (available: {', '.join(available)}); "
                  "running on CPU instead", DeviceFallbackWarning, stacklevel=2)
    return "CPU"


def compression_settings(variant: Variant) -> dict:
    """The compression a variant stands for (mode, group size, symmetry), in NNCF's terms."""
    bits = variant.bits
    sym = bool(variant.option("sym", bits == 4))
    if variant.group_size:
        check_matmul_nbits(variant.group_size, 0)  # the graph is MatMulNBits: its block sizes
        return {"scheme": f"{bits}-bit MatMulNBits graph built from the checkpoint, read by OpenVINO", "bits": bits,
                "mode": f"int{bits}_{'sym' if sym else 'asym'}", "group_size": variant.group_size, "symmetric": sym,
                "embeddings_and_head": f"embeddings int8 per row, head int{bits}"}
    return {"scheme": "NNCF data-free weight compression", "bits": 8, "mode": f"int8_{'sym' if sym else 'asym'}",
            "group_size": -1, "symmetric": sym, "embeddings_and_head": "int8"}


def compress_int8(model, settings: dict):
    """Compress an ``openvino.Model``'s weights to int8 in place with NNCF; returns the model."""
    with nncf_statistics():
        import nncf

        return nncf.compress_weights(model, mode=getattr(nncf.CompressWeightsMode, settings["mode"].upper()))


def export_artifact(variant: "str | Variant", source: str, out_dir) -> Manifest:
    """int8: ONNX export -> NNCF; int4|8-g<N>: the streamed MatMulNBits graph -> OpenVINO IR in ``out_dir``."""
    import openvino as ov

    variant = Variant.parse(variant)
    admit(variant, source, what="export")
    settings = compression_settings(variant)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not variant.group_size:  # ov-int8: NNCF over the fp32 export
        model = compress_int8(_core().read_model(str(cached_export(source))), settings)
        ov.save_model(model, str(out_dir / MODEL_XML), compress_to_fp16=False)
    else:
        with tempfile.TemporaryDirectory(prefix="edgekit-ov-build-", dir=work_dir()) as work:
            graph = build_nbits_decoder(source, work, bits=settings["bits"], block_size=settings["group_size"],
                                        symmetric=settings["symmetric"], accuracy_level=0, int8_embeddings=True,
                                        family="ov", fallback="ov-int8")
            model = _core().read_model(str(graph))
            ov.save_model(model, str(out_dir / MODEL_XML), compress_to_fp16=False)
    copy_side_files(source, out_dir)
    signature = {"inputs": {i.get_any_name(): str(i.get_partial_shape()) for i in model.inputs},
                 "outputs": {o.get_any_name(): str(o.get_partial_shape()) for o in model.outputs[:1]}}
    return write_manifest(out_dir, variant=artifact_name(variant), runtime="openvino", runtime_version=ov.__version__,
                          model=str(source), quantization=settings, signature=signature,
                          runtime_settings={"device": "CPU", "threads": torch.get_num_threads()})


class OpenVINORunner:
    """A compiled OpenVINO IR decoder (KV cache as inputs/outputs) behind the Runner interface."""

    def __init__(self, name: str, folder: Path, tokenizer, device: str = "CPU", threads: int | None = None) -> None:
        self.name = name
        self.tokenizer = tokenizer
        self.folder = Path(folder)
        self.device = select_device(device)
        config = {"PERFORMANCE_HINT": "LATENCY"}
        if threads and self.device == "CPU":
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.compiled = _core().compile_model(str(self.folder / MODEL_XML), self.device, config)
        names = [i.get_any_name() for i in self.compiled.inputs]
        self.past_names = [n for n in names if n.startswith("past_key_values.")]
        self.present_names = [n.replace("past_key_values.", "present.") for n in self.past_names]
        self.has_position_ids = "position_ids" in names
        kv = self.compiled.input(self.past_names[0]).get_partial_shape()
        self.kv_heads, self.head_dim = kv[1].get_length(), kv[3].get_length()
        self.requests = [self.compiled.create_infer_request(), self.compiled.create_infer_request()]

    def _inputs(self, ids: np.ndarray, past_len: int) -> dict:
        batch, length = ids.shape
        inputs = {"input_ids": ids, "attention_mask": np.ones((batch, past_len + length), dtype=np.int64)}
        if self.has_position_ids:
            inputs["position_ids"] = np.broadcast_to(np.arange(past_len, past_len + length, dtype=np.int64),
                                                     (batch, length)).copy()
        return inputs

    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        ids = input_ids.numpy().astype(np.int64)
        empty = np.zeros((ids.shape[0], self.kv_heads, 0, self.head_dim), dtype=np.float32)
        inputs = {**self._inputs(ids, 0), **{n: empty for n in self.past_names}}
        request = self.requests[0]
        request.infer(inputs, share_inputs=True)  # always fresh tensors over numpy: any shape, no copy
        return torch.from_numpy(request.get_tensor("logits").data.copy())

    def generate_stream(self, input_ids: torch.Tensor, max_new_tokens: int, pick: Pick | None = None) -> Iterator[int]:
        ids = input_ids.reshape(1, -1).numpy().astype(np.int64)
        empty = np.zeros((1, self.kv_heads, 0, self.head_dim), dtype=np.float32)
        past = {n: empty for n in self.past_names}
        past_len = 0
        for step in range(max_new_tokens):
            request = self.requests[step % 2]  # the other request still holds this step's past tensors
            request.infer({**self._inputs(ids, past_len), **past}, share_inputs=True)
            token = choose(torch.from_numpy(request.get_tensor("logits").data[0, -1]), pick)
            yield token
            past_len += ids.shape[1]
            past = {p: request.get_tensor(o) for p, o in zip(self.past_names, self.present_names)}
            ids = np.array([[token]], dtype=np.int64)

    def weight_bytes(self) -> int:
        """Bytes of the IR's weights file (compressed weights with their scales and zero points)."""
        return (self.folder / MODEL_BIN).stat().st_size

    def close(self) -> None:
        self.requests = []
        self.compiled = None


@artifact_loader("openvino")
def load_openvino_artifact(manifest: Manifest, device: str | None = None, threads: int | None = None,
                           tokenizer=None) -> OpenVINORunner:
    admit_artifact(manifest)
    settings = manifest.data.get("runtime_settings", {})
    tokenizer = tokenizer or folder_tokenizer(manifest.path)
    return OpenVINORunner(manifest.variant, manifest.path, tokenizer,
                          device=device or settings.get("device", "CPU"),
                          threads=threads or settings.get("threads"))


def _ov_bytes(variant: Variant, out_f: int, in_f: int, bias: bool, dense: str) -> int:
    if not variant.group_size:
        return per_channel_int8_bytes(variant, out_f, in_f, bias, dense)
    return matmul_nbits_bytes(out_f, in_f, bias, variant.bits, variant.group_size,
                              compression_settings(variant)["symmetric"])


def _ov_graph_bytes(variant: Variant, config) -> dict[str, int]:
    """The MatMulNBits graph OpenVINO reads (int8 embeddings, as :func:`export_artifact` builds it), priced per
    module: its reader keeps each tensor's bytes (b-bit codes, fp32 scales, zero points) in the IR."""
    return graph_bytes(config, variant.bits, variant.group_size, compression_settings(variant)["symmetric"],
                       int8_embeddings=True)


@register(r"ov-int(?P<bits>[48])-g(?P<group_size>\d+)", "openvino",
          "OpenVINO IR of the 4- or 8-bit graph built from the checkpoint tensor by tensor (options sym, device, "
          "threads)", ("ov-int4-g32", "ov-int4-g128", "ov-int8-g128"), linear_bytes=_ov_bytes,
          graph_bytes=_ov_graph_bytes, options=("sym", "device", "threads"),
          runtime_options=("device", "threads"), load="streamed-export", dense=lambda variant, checkpoint: "fp16",
          exporter=export_artifact)
@register(r"ov-int(?P<bits>8)", "openvino",
          "OpenVINO IR, NNCF int8 weight compression of the fp32 ONNX export (options sym, device=CPU|GPU|NPU, "
          "threads)",
          ("ov-int8",), linear_bytes=_ov_bytes, options=("sym", "device", "threads"),
          runtime_options=("device", "threads"), load="export", dense=lambda variant, checkpoint: "fp16",
          exporter=export_artifact)
def build_openvino(variant: Variant, source: str, tokenizer) -> OpenVINORunner:
    compression_settings(variant)  # refuse a group size MatMulNBits does not take before exporting anything
    return load_artifact(cached_manifest(variant, source), device=variant.option("device"),
                         threads=variant.option("threads", torch.get_num_threads()), tokenizer=tokenizer)


def self_test(rows: int = 8, width: int = 64) -> None:
    """The OpenVINO probe of :mod:`edgekit.runtimes.selftest`: a MatMul compiled for the CPU plugin and run on a
    batch of rows. Runs in a child process."""
    import openvino as ov
    import openvino.opset13 as ops

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((width, width)).astype(np.float32)
    x = ops.parameter([rows, width], np.float32, name="x")
    model = ov.Model([ops.matmul(x, ops.constant(weight), False, False)], [x], "edgekit-selftest")
    compiled = ov.Core().compile_model(model, "CPU")
    data = rng.standard_normal((rows, width)).astype(np.float32)
    expected = data @ weight
    # the CPU plugin may compute in bf16 where the CPU has it (its default precision hint): ~3 digits
    if np.linalg.norm(compiled(data)[0] - expected) > 1e-2 * np.linalg.norm(expected):
        raise SystemExit("OpenVINO's MatMul disagrees with numpy")
