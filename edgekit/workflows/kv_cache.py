"""Quantized KV caches: the bytes they save, priced by the planner and reported by the runtime.

At long context the KV cache, not the weights, holds most of a model's memory (notebook 02): every
layer keeps a key and a value vector per KV head for every token. Storing them in fewer bits is a
lever separate from weight quantization. What runs with this environment:

- **llama.cpp** (:mod:`edgekit.runtimes.llama_cpp`, option ``kv=q8_0`` / ``kv=q4_0``): its ``type_k`` /
  ``type_v`` cache types, blocks of 32 values with one fp16 scale (q8_0: 34 bytes per 32 values, 4%
  over 8 bits; q4_0: 18). A quantized V cache needs flash attention, so any ``kv=`` turns it on;
  ``kv=f16`` is the same attention path with the default cache, the fair baseline.
- **transformers' QuantizedCache** quantizes with optimum-quanto or hqq as its backend;
  :func:`transformers_backends` says which are installed (the pinned environment has neither).
- **OpenVINO's KV_CACHE_PRECISION** hint applies to the KV *state* of a stateful model; edgekit's
  ``ov-*`` graphs pass the cache as explicit inputs and outputs, so the hint has nothing to act on.

The planner prices every cache type (:func:`edgekit.memory.plan.kv_cache_bytes`, from gguf's own table of
block sizes); :func:`runtime_kv_bytes` reads what llama.cpp allocated for a runner (its
``llama_kv_cache: size = ...`` log line), so the two can be checked against each other.
"""
from __future__ import annotations

import ctypes
import importlib.util
import re
from contextlib import contextmanager
from typing import Iterable, Iterator

import pandas as pd

from edgekit.core.errors import VariantError
from edgekit.memory.bytes import kv_cache_bytes, kv_cache_dtype, weight_bytes
from edgekit.models.config import load_config
from edgekit.runtimes import build_runner
from edgekit.variants.registry import Variant

MIB = 1024 ** 2
# llama.cpp's line when it allocates the cache (src/llama-kv-cache.cpp)
KV_LINE = re.compile(r"llama_kv_cache: size = +([\d.]+) MiB \( *(\d+) cells, +(\d+) layers.*?K \((\w+)\): +([\d.]+) "
                     r"MiB, "
                     r"V \((\w+)\): +([\d.]+) MiB")


def transformers_backends() -> dict[str, bool]:
    """Whether each backend of transformers' QuantizedCache (``cache_implementation="quantized"``) is installed."""
    return {"optimum-quanto": importlib.util.find_spec("optimum.quanto") is not None,
            "hqq": importlib.util.find_spec("hqq") is not None}


def kv_plan(config, variant: str, contexts: Iterable[int], cache_types: Iterable[str], batch: int = 1) -> pd.DataFrame:
    """Planned KV cache bytes of ``config`` per context and cache type, beside the weights under ``variant``
    (a llama.cpp cache type: ``f16``, ``q8_0``, ``q4_0``...)."""
    cfg = load_config(config)
    weights = weight_bytes(cfg, variant)
    rows = []
    for context in contexts:
        row = {"context": context, "weights GiB": weights / 1024 ** 3}
        for cache in cache_types:
            row[f"KV {cache} GiB"] = kv_cache_bytes(cfg, context, batch, cache) / 1024 ** 3
        rows.append(row)
    return pd.DataFrame(rows)


@contextmanager
def _llama_cpp_log() -> Iterator[list[str]]:
    """Collect what llama.cpp logs inside the block (whatever the runner's verbosity), then give the
    log back to llama-cpp-python's own handler."""
    import llama_cpp
    from llama_cpp import _logger

    lines: list[str] = []

    @llama_cpp.llama_log_callback
    def keep(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        lines.append(text.decode("utf-8", "replace"))

    llama_cpp.llama_log_set(keep, ctypes.c_void_p(0))
    try:
        yield lines
    finally:
        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))


def runtime_kv_bytes(variant: str, model: str = "default") -> dict:
    """What llama.cpp allocated for the KV cache of ``variant`` (a ``gguf-*`` variant, with its ``kv`` and
    ``n_ctx`` options): cells (tokens), layers, K and V types and bytes (from MiB with two decimals), and
    what the planner prices for the same cells and type."""
    parsed = Variant.parse(variant)
    if parsed.family != "llama.cpp":
        raise VariantError(f"{variant} does not run in llama.cpp; the runtime's KV report is read for gguf-* variants")
    with _llama_cpp_log() as lines:
        runner = build_runner(parsed, model)
    runner.close()
    match = next((m for m in map(KV_LINE.search, "".join(lines).splitlines()) if m), None)
    if match is None:
        raise VariantError(f"llama.cpp did not report its KV cache for {variant}; its log format changed, "
                           "update edgekit.workflows.kv_cache.KV_LINE")
    total, cells, layers, k_type, k_mib, v_type, v_mib = match.groups()
    return {"variant": str(parsed), "cells": int(cells), "layers": int(layers), "k_type": k_type, "v_type": v_type,
            "reported_bytes": round((float(k_mib) + float(v_mib)) * MIB), "reported_total_mib": float(total),
            "planned_bytes": kv_cache_bytes(model, int(cells), 1, kv_cache_dtype(model, parsed))}
