"""The variant registry: one entry per way of holding a model, and everything known about it.

A variant name parses into a small immutable :class:`Variant`; options follow a colon,
``nf4:double_quant=true,compute_dtype=bf16``. **The registry entry is the variant**: the entry
that ``@register`` adds carries the builder (name -> Runner), the runtime that runs it
(``family``), the options it accepts, how the planner prices one linear layer under it, what
dtype it leaves unquantized, how its load peaks (:data:`LOAD_KINDS`, priced in
:mod:`edgekit.plan`), and the example names pickers offer. The planner, the load guard, the
widgets, the CLI and the docs all read these entries, so adding a variant is adding one entry
in one module (the modules in :data:`VARIANT_MODULES` are imported on first lookup, so importing
edgekit stays fast and a missing optional runtime only matters when its variant is asked for).

Options every PyTorch variant accepts are read by the load guard (:data:`GUARD_OPTIONS`) or by
its runner once built (:data:`RUNNER_OPTIONS`).
"""
from __future__ import annotations

import importlib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from edgekit import selftest
from edgekit.artifact import read_manifest
from edgekit.data import staged
from edgekit.errors import ArtifactError, VariantError
from edgekit.loading import load_tokenizer

# Modules whose import registers variants, in the order their names are listed.
VARIANT_MODULES = ("edgekit.runtimes.pytorch", "edgekit.calibrated", "edgekit.mixed", "edgekit.qat",
                   "edgekit.runtimes.onnxruntime", "edgekit.runtimes.openvino", "edgekit.runtimes.llama_cpp", "edgekit.pruning",
                   "edgekit.kquant", "edgekit.outliers")
# How a load reaches its peak, beyond the loaded model itself (see edgekit.plan.load_peak_bytes):
LOAD_KINDS = {
    "as-is": "the checkpoint loads at the variant's own dtype",
    "bitsandbytes": "transformers holds the full-precision checkpoint while bitsandbytes quantizes it, "
                    "unless it quantizes while loading (low_memory=true)",
    "packed": "packed tensor by tensor while loading (low_memory=true, the default over 1 GiB); "
              "else the model loads in fp32 before it is packed",
    "calibrated": "calibrated layer by layer from the shards, one fp32 decoder layer and its calibration "
                  "activations at a time (low_memory=true, the default over 1 GiB); else the model loads in "
                  "fp32 before it is calibrated",
    "full-precision": "the model loads in fp32 before it is quantized or packed",
    "training": "teacher, student, gradients and Adam's two moments in fp32",
    "export": "the exporter holds the fp32 model and the graph it writes",
    "streamed-export": "the exporter reads the checkpoint one tensor at a time and writes the quantized artifact, "
                       "which the runtime then holds while compiling and loading it",
}
# Options the load guard reads for every PyTorch variant (edgekit.guard.guarded_load).
GUARD_OPTIONS = ("context", "profile", "offload", "low_memory", "device")
# Options every PyTorch variant's runner reads after it is built (compile=true: see TorchRunner.compile_decoding)
RUNNER_OPTIONS = ("compile",)
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}

Builder = Callable[..., Any]
# bytes of one ``out x in`` linear (with or without bias) under a variant; ``dense`` is the dtype
# the variant leaves unquantized
LinearBytes = Callable[["Variant", int, int, bool, str], int]


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
        entry, match = lookup(name)
        fields = tuple((k, _coerce(v)) for k, v in match.groupdict().items() if v is not None)
        options = _parse_options(opts, name)
        unknown = sorted({k for k, _ in options} - set(entry.accepted_options))
        if unknown:
            raise VariantError(f"unknown option(s) {', '.join(unknown)} for {name}; it takes "
                               f"{', '.join(entry.accepted_options) or 'no options'}")
        return Variant(name, entry.family, fields, options)

    def with_options(self, **options: Any) -> "Variant":
        """This variant with ``options`` set (replacing any of the same name), checked as :meth:`parse` checks them."""
        return Variant.parse(str(Variant(self.name, self.family, self.fields,
                                         tuple(sorted({**dict(self.options), **options}.items())))))

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

    @property
    def entry(self) -> "Entry":
        return lookup(self.name)[0]

    def __str__(self) -> str:
        return self.name + (":" + ",".join(f"{k}={v}" for k, v in self.options) if self.options else "")


def _own_dtype(variant: Variant, checkpoint: str) -> str:
    """What a quantized PyTorch variant leaves unquantized: its compute_dtype, else the checkpoint's."""
    compute = variant.option("compute_dtype")
    if compute is not None and compute not in DTYPE_BYTES:
        raise VariantError(f"compute_dtype={compute!r} in {variant}; choose one of {', '.join(DTYPE_BYTES)}")
    return compute or checkpoint


@dataclass(frozen=True)
class Entry:
    pattern: re.Pattern
    family: str                      # the runtime: pytorch, onnxruntime, openvino, llama.cpp
    builder: Builder                 # builder(variant, source, tokenizer) -> Runner
    summary: str
    linear_bytes: LinearBytes
    examples: tuple[str, ...] = ()   # the names pickers offer and help lists
    options: tuple[str, ...] = ()    # options of its own
    load: str = "full-precision"     # a key of LOAD_KINDS
    dense: Callable[[Variant, str], str] = _own_dtype  # (variant, checkpoint dtype) -> unquantized dtype
    offered: bool = True             # listed in pickers and the planner's advice
    exporter: Callable[..., Any] | None = None  # exporter(variant, source, out_dir) -> Manifest
    # (variant, config) -> the config of the model as held, where the variant changes shapes (structured
    # pruning); the planner prices that one. None: the shapes stay the config's.
    held_config: Callable[["Variant", Any], Any] | None = None

    @property
    def accepted_options(self) -> tuple[str, ...]:
        return self.options + (GUARD_OPTIONS + RUNNER_OPTIONS if self.family == "pytorch" else ())


REGISTRY: list[Entry] = []
_modules_loaded = False


def register(pattern: str, family: str, summary: str, examples: tuple[str, ...] = (), *,
             linear_bytes: LinearBytes, options: tuple[str, ...] = (), load: str = "full-precision",
             dense: Callable[[Variant, str], str] = _own_dtype, offered: bool = True,
             exporter: Callable[..., Any] | None = None, held_config: Callable[[Variant, Any], Any] | None = None):
    """Decorator: the one entry for the variant names matching ``pattern`` (see :class:`Entry`)."""
    if load not in LOAD_KINDS:
        raise ValueError(f"load={load!r}; choose one of {', '.join(LOAD_KINDS)}")

    def wrap(builder: Builder) -> Builder:
        REGISTRY.append(Entry(re.compile(pattern), family, builder, summary, linear_bytes, examples or (pattern,),
                              tuple(options), load, dense, offered, exporter, held_config))
        REGISTRY.sort(key=_module_rank)  # stable: entries of one module keep their order
        return builder
    return wrap


def _module_rank(entry: Entry) -> int:
    """Entries list in the order of :data:`VARIANT_MODULES`, whichever module was imported first
    (entries registered from elsewhere come last)."""
    module = entry.builder.__module__
    return VARIANT_MODULES.index(module) if module in VARIANT_MODULES else len(VARIANT_MODULES)


def unregister(pattern: str) -> None:
    """Remove the entry registered for ``pattern`` (a plugin or a test taking its variant back)."""
    REGISTRY[:] = [e for e in REGISTRY if e.pattern.pattern != pattern]


def lookup(name: str) -> tuple[Entry, re.Match]:
    _load_modules()
    for entry in REGISTRY:
        match = entry.pattern.fullmatch(name)
        if match:
            return entry, match
    raise VariantError(f"unknown variant {name!r}; valid variants: {', '.join(known_variants())}")


def entries() -> list[Entry]:
    """Every entry, in the order of :data:`VARIANT_MODULES` (then any registered from elsewhere)."""
    _load_modules()
    return list(REGISTRY)


def known_variants() -> list[str]:
    """Every example name, in registry order (what help texts list)."""
    return [example for entry in entries() for example in entry.examples]


def offered_variants(families: tuple[str, ...] | None = None, per_entry: int | None = None) -> list[str]:
    """The names pickers offer (optionally of some runtimes only, or the first ``per_entry`` of each entry)."""
    return [example for entry in entries() if entry.offered and (families is None or entry.family in families)
            for example in entry.examples[:per_entry]]


def build_runner(variant: "str | Variant", source: str = "default", tokenizer=None):
    """Build the Runner for ``variant`` of the model at ``source``."""
    variant = Variant.parse(variant)
    selftest.require(variant.family)  # a native runtime that would crash here is refused in one line
    tokenizer = tokenizer or load_tokenizer(source)
    runner = variant.entry.builder(variant, source, tokenizer)
    if variant.option("compile"):  # a RUNNER_OPTIONS option, so only PyTorch runners get here
        runner.compile_decoding()
    return runner


def export_artifact(variant: "str | Variant", source: str, out_dir) -> Any:
    """Write the artifact of an exportable variant (onnx-*, gguf-*, ov-*) to ``out_dir``; returns its Manifest."""
    variant = Variant.parse(variant)
    exporter = variant.entry.exporter
    if exporter is None:
        exportable = [e.pattern.pattern for e in entries() if e.exporter is not None]
        raise VariantError(f"variant {variant.name!r} has no artifact to export; exportable: "
                           f"{', '.join(exportable) or 'none installed'}")
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ArtifactError(f"{out_dir} already exists and is not empty; choose a new folder or delete it first")
    selftest.require(variant.family)
    if out_dir.exists():
        out_dir.rmdir()
    staged(out_dir, lambda staging: exporter(variant, source, staging))
    return read_manifest(out_dir)


# ---------------------------------------------------------------- byte layouts shared by several entries
def dense_linear_bytes(dtype: str) -> LinearBytes:
    """An unquantized linear at ``dtype`` (its bias too)."""
    return lambda variant, out_f, in_f, bias, dense: (out_f * in_f + (out_f if bias else 0)) * DTYPE_BYTES[dtype]


def group_codes_bytes(out_f: int, in_f: int, bias: bool, bits: int, group_size: int) -> int:
    """b-bit codes plus an fp16 scale and a uint8 zero point per group of ``group_size`` inputs
    (a last, shorter group where the width is not a multiple), fp32 bias."""
    groups = out_f * math.ceil(in_f / group_size)
    return math.ceil(out_f * in_f * bits / 8) + 3 * groups + (4 * out_f if bias else 0)


def per_channel_int8_bytes(variant: Variant, out_f: int, in_f: int, bias: bool, dense: str) -> int:
    """int8 weights with an fp32 scale and an int8 zero point per output channel, fp32 bias."""
    return out_f * in_f + 5 * out_f + (4 * out_f if bias else 0)


def _load_modules() -> None:
    global _modules_loaded
    if _modules_loaded:
        return
    _modules_loaded = True
    for module in VARIANT_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:  # the module exists but one of its imports is missing
                raise


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
        if not eq or not key.strip() or "=" in value:  # "a=1:b=2" is two options run together (device=cuda:1 is one)
            raise VariantError(f"bad option {item!r} in variant {name!r}; write options as name:key=value,key=value")
        options.append((key.strip(), _coerce(value.strip())))
    return tuple(sorted(options))
