"""Quantize an exported ONNX causal LM with ONNX Runtime's own quantization tools.

Follows the ONNX Runtime guide "Quantize ONNX models"
(onnxruntime.ai/docs/performance/model-optimizations/quantization.html):

- **dynamic int8** (``quantize_dynamic``): weights of every MatMul/Gather with a constant
  weight stored as int8 (per output channel, or one scale per tensor); activations are
  quantized on the fly at run time (``MatMulInteger`` / ``DynamicQuantizeMatMul``).
- **static int8 QDQ** (``quantize_static``): activation ranges calibrated (MinMax) on
  windows of the ``calibration`` corpus split, written as QuantizeLinear/DequantizeLinear
  pairs around each MatMul, which ONNX Runtime fuses into integer kernels.
- **4- or 8-bit weight-only** (``MatMulNBits``): each linear weight packed into blocks of
  32/64/128 weights with one scale (and a zero point unless symmetric). ``accuracy_level``
  picks the compute type of the CPU kernel: 0 (unset) and 1 dequantize to fp32; 4 quantizes
  activations to int8 and runs int8 dot products, which is what makes it fast on CPUs. These
  graphs are not quantized after an export: :mod:`edgekit.runtimes.onnx.build` writes them
  from the checkpoint one weight at a time (with the per-tensor kernel of ORT's
  ``MatMulNBitsQuantizer``), so a 7B never sits in memory; :func:`check_matmul_nbits` refuses bad settings.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

from edgekit.core.errors import VariantError
from edgekit.core.paths import begin_with_bos
from edgekit.core.progress import tqdm
from edgekit.core.quiet import at_level, ort_quantization
from edgekit.runtimes.onnx.files import EXTERNAL_DATA_THRESHOLD


@contextmanager
def _quiet_quantizer_logs():
    """ONNX Runtime's quantizers log every tensor at INFO on the root logger; keep warnings only
    (less the pre-processing advice, see edgekit.core.quiet)."""
    with at_level("", logging.WARNING), ort_quantization():
        yield


def _is_large(model_path: Path) -> bool:
    return sum(p.stat().st_size for p in model_path.parent.glob(model_path.name + "*")) > EXTERNAL_DATA_THRESHOLD


def quantize_int8_dynamic(source: str | Path, target: str | Path, per_channel: bool = True) -> Path:
    """Dynamic int8: int8 weights (per output channel by default), activations quantized at run time."""

    source, target = Path(source), Path(target)
    with _quiet_quantizer_logs():
        quantize_dynamic(source, target, per_channel=per_channel, weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul", "Gather"], use_external_data_format=_is_large(source),
                         extra_options={"MatMulConstBOnly": True})
    return target


class CalibrationWindows:
    """An ONNX Runtime ``CalibrationDataReader`` feeding windows of the calibration split (empty KV cache),
    each under the BOS rule of ``tokenizer`` (:func:`edgekit.core.paths.begin_with_bos`; None: as they come)."""

    def __init__(self, model_path: Path, token_ids, windows: int = 16, length: int = 128, tokenizer=None) -> None:

        session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
        inputs = {i.name: i for i in session.get_inputs()}
        del session
        ids = np.asarray(token_ids, dtype=np.int64).reshape(-1)
        count = min(windows, len(ids) // length)
        if count == 0:
            raise VariantError(f"the calibration text has {len(ids)} tokens, fewer than one window of {length}")
        past = [n for n in inputs if n.startswith("past_key_values.")]
        shape = inputs[past[0]].shape
        empty = np.zeros((1, int(shape[1]), 0, int(shape[3])), dtype=np.float32)
        self.feeds = []
        rows = begin_with_bos(torch.from_numpy(ids[:count * length].reshape(count, length)), tokenizer).numpy()
        for row in rows:
            chunk = row[None, :]
            feed = {"input_ids": chunk, "attention_mask": np.ones_like(chunk)}
            if "position_ids" in inputs:
                feed["position_ids"] = np.arange(length, dtype=np.int64)[None, :]
            feed.update({n: empty for n in past})
            self.feeds.append(feed)
        self._iter = iter(tqdm(self.feeds, desc="calibrate", unit="win", leave=False))

    def get_next(self):
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = iter(self.feeds)


def quantize_int8_static(source: str | Path, target: str | Path, calibration_ids, per_channel: bool = True,
                         windows: int = 16, length: int = 128, tokenizer=None) -> Path:
    """Static int8 QDQ: MinMax activation ranges from ``calibration_ids``; uint8 activations, int8 weights."""

    source, target = Path(source), Path(target)
    reader = CalibrationWindows(source, calibration_ids, windows, length, tokenizer)
    with _quiet_quantizer_logs():
        quantize_static(source, target, reader, quant_format=QuantFormat.QDQ, op_types_to_quantize=["MatMul"],
                        per_channel=per_channel, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, use_external_data_format=_is_large(source),
                        extra_options={"MatMulConstBOnly": True})
    return target
