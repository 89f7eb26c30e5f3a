"""Variants: a quantization choice named by a string, and the one registry that builds each.

A variant name parses into a small immutable :class:`Variant`; options follow a colon,
``nf4:double_quant=true,compute_dtype=bf16``. The registry maps a name pattern to the
function that builds a :class:`~edgekit.runners.Runner` for it, so adding a variant is
adding one ``@register`` entry. PyTorch variants are registered here; ONNX, GGUF,
OpenVINO and calibrated variants register themselves from their own modules.
"""
from __future__ import annotations

import importlib
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from edgekit import selftest
from edgekit.errors import VariantError


@dataclass(frozen=True)
class Variant:
    """A parsed variant name: ``name`` (without options), the registry ``family``,
    the fields its pattern captured (``bits``, ``group_size``...) and user ``options``."""

    name: str
    family: str
    fields: tuple[tuple[str, Any], ...] = ()
    options: tuple[tuple[str, Any], ...] = ()

    @staticmethod
    def parse(text: "str | Variant") -> "Variant":
        if isinstance(text, Variant):
            return text
        name, _, opts = str(text).strip().partition(":")
        entry, match = _lookup(name)
        fields = tuple((k, _coerce(v)) for k, v in match.groupdict().items() if v is not None)
        return Variant(name, entry.family, fields, _parse_options(opts, name))

    def field(self, key: str, default: Any = None) -> Any:
        return dict(self.fields).get(key, default)

    def option(self, key: str, default: Any = None) -> Any:
        return dict(self.options).get(key, default)

    @property
    def bits(self) -> int | None:
        return self.field("bits")

    @property
    def group_size(self) -> int | None:
        return self.field("group_size")

    def __str__(self) -> str:
        return self.name + (":" + ",".join(f"{k}={v}" for k, v in self.options) if self.options else "")


Builder = Callable[..., Any]


@dataclass(frozen=True)
class Entry:
    pattern: re.Pattern
    family: str
    builder: Builder
    summary: str
    examples: tuple[str, ...] = field(default=())


REGISTRY: list[Entry] = []
EXPORTERS: list[tuple[re.Pattern, Callable[..., Any]]] = []
# Modules that register more variants; imported on first lookup so that importing edgekit
# stays fast and a missing optional runtime only matters when its variant is asked for.
PLUGIN_MODULES = ("edgekit.onnx_variants", "edgekit.calibrated", "edgekit.gguf", "edgekit.openvino_backend")
_plugins_loaded = False


def register(pattern: str, family: str, summary: str, examples: tuple[str, ...] = ()):
    """Decorator: ``builder(variant, source, tokenizer) -> Runner`` builds names matching ``pattern``."""
    def wrap(builder: Builder) -> Builder:
        REGISTRY.append(Entry(re.compile(pattern), family, builder, summary, examples or (pattern,)))
        return builder
    return wrap


def register_exporter(pattern: str):
    """Decorator: ``exporter(variant, source, out_dir) -> Manifest`` writes a shippable artifact."""
    def wrap(exporter):
        EXPORTERS.append((re.compile(pattern), exporter))
        return exporter
    return wrap


def export_artifact(variant: "str | Variant", source: str, out_dir) -> Any:
    """Write the artifact of an exportable variant (onnx-*, gguf-*, ov-*) to ``out_dir``; returns its Manifest."""
    variant = Variant.parse(variant)
    for pattern, exporter in EXPORTERS:
        if pattern.fullmatch(variant.name):
            return exporter(variant, source, out_dir)
    exportable = [p.pattern for p, _ in EXPORTERS]
    raise VariantError(f"variant {variant.name!r} has no artifact to export; exportable: {', '.join(exportable) or 'none installed'}")


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for module in PLUGIN_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:  # the module exists but one of its imports is missing
                raise


def _lookup(name: str) -> tuple[Entry, re.Match]:
    _load_plugins()
    for entry in REGISTRY:
        match = entry.pattern.fullmatch(name)
        if match:
            return entry, match
    raise VariantError(f"unknown variant {name!r}; valid variants: {', '.join(known_variants())}")


def known_variants() -> list[str]:
    _load_plugins()
    return [example for entry in REGISTRY for example in entry.examples]


def _coerce(value: str) -> Any:
    low = value.lower()
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def _parse_options(text: str, name: str) -> tuple[tuple[str, Any], ...]:
    if not text:
        return ()
    options = []
    for item in text.split(","):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise VariantError(f"bad option {item!r} in variant {name!r}; write options as name:key=value,key=value")
        options.append((key.strip(), _coerce(value.strip())))
    return tuple(sorted(options))


def build_runner(variant: "str | Variant", source: str = "default", tokenizer=None):
    """Build the Runner for ``variant`` of the model at ``source``."""
    from edgekit.loading import load_tokenizer

    variant = Variant.parse(variant)
    entry, _ = _lookup(variant.name)
    selftest.require(entry.family)  # a native runtime that would crash here is refused in one line
    tokenizer = tokenizer or load_tokenizer(source)
    return entry.builder(variant, source, tokenizer)


# ---------------------------------------------------------------- PyTorch variants
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _device(variant: Variant) -> str:
    return variant.option("device", "cuda" if torch.cuda.is_available() else "cpu")


def _compute_dtype(variant: Variant, default: str) -> torch.dtype:
    name = variant.option("compute_dtype", default)
    if name not in DTYPES:
        raise VariantError(f"compute_dtype={name!r} in {variant}; choose one of {', '.join(DTYPES)}")
    return DTYPES[name]


def _torch_runner(variant: Variant, source: str, tokenizer, **kwargs):
    from edgekit.plan import guarded_load
    from edgekit.runners import TorchRunner

    # the memory plan is checked first; offload=true / low_memory=true choose how it loads
    model = guarded_load(variant, source, _device(variant), **kwargs)
    return TorchRunner(str(variant), model, tokenizer)


@register(r"fp32|bf16|fp16", "pytorch", "unquantized baselines", ("fp32", "bf16", "fp16"))
def build_dense(variant: Variant, source: str, tokenizer):
    return _torch_runner(variant, source, tokenizer, dtype=DTYPES[variant.name])


class _DropMessage(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


_INT8_CAST_NOTICE = _DropMessage("MatMul8bitLt: inputs will be cast")


@register(r"int8", "pytorch", "bitsandbytes LLM.int8 (option threshold=6.0)", ("int8",))
def build_bnb_int8(variant: Variant, source: str, tokenizer):
    from transformers import BitsAndBytesConfig

    # LLM.int8 quantizes activations from fp16; bitsandbytes logs that cast on every matmul
    # of an fp32 model, thousands of times a run. It is expected, so that one message is dropped.
    logging.getLogger("bitsandbytes.autograd._functions").addFilter(_INT8_CAST_NOTICE)

    config = BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=float(variant.option("threshold", 6.0)))
    return _torch_runner(variant, source, tokenizer, quantization_config=config, dtype=torch.float32)


@register(r"(?P<quant_type>nf4|fp4)", "pytorch",
          "bitsandbytes 4-bit (options double_quant=false, compute_dtype=fp32|bf16|fp16)", ("nf4", "fp4"))
def build_bnb_4bit(variant: Variant, source: str, tokenizer):
    from transformers import BitsAndBytesConfig

    compute = _compute_dtype(variant, "bf16" if _device(variant) == "cuda" else "fp32")
    config = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type=variant.name,
        bnb_4bit_use_double_quant=bool(variant.option("double_quant", False)),
        bnb_4bit_compute_dtype=compute)
    return _torch_runner(variant, source, tokenizer, quantization_config=config, dtype=compute)


@register(r"int(?P<bits>[2348])-g(?P<group_size>\d+)", "pytorch",
          "group-wise RTN weight-only, real packed codes (edgekit.packed)",
          ("int4-g32", "int4-g64", "int4-g128", "int3-g64", "int3-g128", "int2-g32", "int2-g64"))
def build_packed(variant: Variant, source: str, tokenizer):
    from edgekit.packed import quantize_rtn

    runner = _torch_runner(variant, source, tokenizer, dtype=torch.float32)
    quantize_rtn(runner.model, variant.bits, variant.group_size)
    return runner
