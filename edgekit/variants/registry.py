"""The variant registry: one entry per way of holding a model, and everything known about it.

A variant name parses into a small immutable :class:`Variant`; options follow a colon,
``nf4:double_quant=true,compute_dtype=bf16``. **The registry entry is the variant**: the entry
that ``@register`` adds carries the builder (name -> Runner), the runtime that runs it
(``family``), the options it accepts, how the planner prices one linear layer under it (or the whole graph
its runtime writes, where that stores more than the model's parameters), what dtype it leaves unquantized,
how its load peaks (a load kind: its meaning and arithmetic live together in
:data:`edgekit.memory.peak.LOAD_KINDS`), and the example names pickers offer. The planner, the load guard, the
widgets, the CLI and the docs all read these entries, so adding a variant is adding one entry
in one module, found by walking the rooms of :data:`METHOD_ROOMS` and imported on first lookup (so
importing edgekit stays fast and a missing optional runtime only matters when its variant is asked for).

Options every PyTorch variant accepts are read by the load guard (:data:`GUARD_OPTIONS`) or by
its runner once built (:data:`RUNNER_OPTIONS`).
"""
from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

import torch

from edgekit.core.dtypes import DTYPE_BYTES, dtype_name
from edgekit.core.errors import VariantError

# The rooms whose modules register variants, in the order their entries list: every module in them is found
# by walking the room (a new method is one file in its room), and imported on first lookup.
METHOD_ROOMS = ("edgekit.runtimes.pytorch", "edgekit.quantizers", "edgekit.pruning", "edgekit.runtimes")
# Options the load guard reads for every PyTorch variant (edgekit.memory.guard.guarded_load).
GUARD_OPTIONS = ("context", "profile", "offload", "low_memory", "device")
# Options every PyTorch variant's runner reads after it is built (compile=true: see TorchRunner.compile_decoding)
RUNNER_OPTIONS = ("compile",)

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
        """The user's option ``key``, else its entry's default (:attr:`Entry.defaults`), else ``default``."""
        options = dict(self.options)
        return options[key] if key in options else self.entry.default_options.get(key, default)

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


def device_of(variant: Variant) -> str:
    """The device a PyTorch variant runs on: option ``device``, else CUDA where there is one."""
    return variant.option("device", "cuda" if torch.cuda.is_available() else "cpu")


def compute_dtype(variant: Variant, default: str | None = None) -> str:
    """The one ``compute_dtype`` rule: the option if given (an unknown name is refused), else ``default``,
    else bf16 on CUDA (the int4 kernel's activations, as gpt-fast holds its models) and fp32 elsewhere."""
    name = variant.option("compute_dtype", default or ("bf16" if device_of(variant) == "cuda" else "fp32"))
    return dtype_name(name, "compute_dtype", variant)


def _own_dtype(variant: Variant, checkpoint: str) -> str:
    """What a PyTorch variant leaves unquantized and computes in: its compute_dtype, else the checkpoint's."""
    return compute_dtype(variant, checkpoint)


def checkpoint_dtype(variant: Variant, checkpoint: str) -> str:
    """Unquantized weights kept in the checkpoint's own dtype (bitsandbytes keeps embeddings, norms, head so)."""
    return checkpoint


@dataclass(frozen=True)
class Entry:
    pattern: re.Pattern
    family: str                      # the runtime: pytorch, onnxruntime, openvino, llama.cpp
    builder: Builder                 # builder(variant, source, tokenizer) -> Runner
    summary: str
    linear_bytes: LinearBytes
    examples: tuple[str, ...] = ()   # the names pickers offer and help lists
    options: tuple[str, ...] = ()    # options of its own
    load: str = "full-precision"     # how its load peaks: a key of edgekit.memory.peak.LOAD_KINDS
    # (variant, checkpoint dtype) -> the dtype of the weights it leaves unquantized (embeddings, norms, head) ...
    dense: Callable[[Variant, str], str] = _own_dtype
    # ... and of its activations and KV cache (they differ for bitsandbytes: compute_dtype vs the checkpoint's)
    compute: Callable[[Variant, str], str] | None = None  # None: as ``dense``
    offered: bool = True             # listed in pickers and the planner's advice
    exporter: Callable[..., Any] | None = None  # exporter(variant, source, out_dir) -> Manifest
    # (variant, config) -> the config of the model as held, where the variant changes shapes (structured
    # pruning); the planner prices that one. None: the shapes stay the config's.
    held_config: Callable[["Variant", Any], Any] | None = None
    # option defaults: the one place builder, planner and help read them (Variant.option falls back to these)
    defaults: tuple[tuple[str, Any], ...] = ()
    # options read when an artifact is loaded (threads, device...): they never change the artifact, every other
    # option does (see edgekit.artifacts.cache.artifact_name)
    runtime_options: tuple[str, ...] = ()
    # (variant, rows, cols, dense dtype) -> bytes of the token embedding / LM head table as held, for a method
    # that quantizes them too (kquant); None: they stay dense at ``dense``
    table_bytes: Callable[["Variant", int, int, str], int] | None = None
    # (variant, held config) -> bytes per top-level module of the graph its runtime writes from the config, for a
    # variant whose graph stores what the model's parameters do not list (a tied head's second copy, rotary
    # tables); the planner prices that instead of the parameters. None: the parameters, as above.
    graph_bytes: Callable[["Variant", Any], dict[str, int]] | None = None

    @property
    def default_options(self) -> dict[str, Any]:
        return dict(self.defaults)

    @property
    def accepted_options(self) -> tuple[str, ...]:
        return self.options + (GUARD_OPTIONS + RUNNER_OPTIONS if self.family == "pytorch" else ())


REGISTRY: list[Entry] = []
_FOUND: dict[str, tuple[Entry, re.Match]] = {}  # lookup's memory, forgotten whenever the registry changes
_modules_loaded = False
_UNLOADED: dict[str, str] = {}  # a method module -> the third-party library it could not import


def register(pattern: str, family: str, summary: str, examples: tuple[str, ...] = (), *,
             linear_bytes: LinearBytes, options: tuple[str, ...] = (), load: str = "full-precision",
             dense: Callable[[Variant, str], str] = _own_dtype, compute: Callable[[Variant, str], str] | None = None,
             offered: bool = True, exporter: Callable[..., Any] | None = None,
             held_config: Callable[[Variant, Any], Any] | None = None, defaults: dict[str, Any] | None = None,
             runtime_options: tuple[str, ...] = (), table_bytes: Callable[[Variant, int, int, str], int]
             | None = None, graph_bytes: Callable[[Variant, Any], dict[str, int]] | None = None):
    """Decorator: the one entry for the variant names matching ``pattern`` (see :class:`Entry`)."""
    def wrap(builder: Builder) -> Builder:
        REGISTRY.append(Entry(re.compile(pattern), family, builder, summary, linear_bytes, examples or (pattern,),
                              tuple(options), load, dense, compute or dense, offered, exporter, held_config,
                              tuple(sorted((defaults or {}).items())), tuple(runtime_options), table_bytes,
                              graph_bytes))
        REGISTRY.sort(key=_module_rank)  # stable: entries of one module keep their order
        _FOUND.clear()
        return builder
    return wrap


def _module_rank(entry: Entry) -> int:
    """Entries list in the order their modules are found (:func:`method_modules`), whichever module was
    imported first (entries registered from elsewhere come last)."""
    found = method_modules()
    module = entry.builder.__module__
    return found.index(module) if module in found else len(found)


@lru_cache(maxsize=1)
def method_modules() -> list[str]:
    """Every module of the rooms in :data:`METHOD_ROOMS` (modules and subpackages, not their insides), in
    room order, then by name; found from the files, nothing imported."""
    found: list[str] = []
    for room in METHOD_ROOMS:
        spec = importlib.util.find_spec(room)
        if spec.submodule_search_locations is None:
            continue
        for info in sorted(pkgutil.iter_modules(spec.submodule_search_locations), key=lambda i: i.name):
            name = f"{room}.{info.name}"
            if name not in found and not any(name == r or r.startswith(name + ".") for r in METHOD_ROOMS):
                found.append(name)
        if room not in found:
            found.insert(0 if room == METHOD_ROOMS[0] else len(found), room)
    return found


def unregister(pattern: str) -> None:
    """Remove the entry registered for ``pattern`` (a plugin or a test taking its variant back)."""
    REGISTRY[:] = [e for e in REGISTRY if e.pattern.pattern != pattern]
    _FOUND.clear()


def lookup(name: str) -> tuple[Entry, re.Match]:
    """The entry whose pattern matches ``name`` and the match (remembered: a Variant asks for its entry often)."""
    _load_modules()
    if name in _FOUND:
        return _FOUND[name]
    for entry in REGISTRY:
        match = entry.pattern.fullmatch(name)
        if match:
            _FOUND[name] = entry, match
            return entry, match
    missing = "".join(f"; {module}'s variants need {library} (pip install {library.split('.')[0]})"
                      for module, library in _UNLOADED.items())
    raise VariantError(f"unknown variant {name!r}; valid variants: {', '.join(known_variants())}{missing}")


def entries() -> list[Entry]:
    """Every entry, in the order their modules are found (then any registered from elsewhere)."""
    _load_modules()
    return list(REGISTRY)


def known_variants() -> list[str]:
    """Every example name, in registry order (what help texts list)."""
    return [example for entry in entries() for example in entry.examples]


def offered_variants(families: tuple[str, ...] | None = None, per_entry: int | None = None) -> list[str]:
    """The names pickers offer (optionally of some runtimes only, or the first ``per_entry`` of each entry)."""
    return [example for entry in entries() if entry.offered and (families is None or entry.family in families)
            for example in entry.examples[:per_entry]]


# ---------------------------------------------------------------- byte layouts shared by several entries
def dense_linear_bytes(dtype: str) -> LinearBytes:
    """An unquantized linear at ``dtype`` (its bias too)."""
    return lambda variant, out_f, in_f, bias, dense: (out_f * in_f + (out_f if bias else 0)) * DTYPE_BYTES[dtype]


def per_channel_int8_bytes(variant: Variant, out_f: int, in_f: int, bias: bool, dense: str) -> int:
    """int8 weights with an fp32 scale and an int8 zero point per output channel, fp32 bias."""
    return out_f * in_f + 5 * out_f + (4 * out_f if bias else 0)


def _load_modules() -> None:
    """Import every method module once. A module whose third-party library is not installed (bitsandbytes
    on a machine without it) is left out and named in lookup's refusal; the other methods stay available.
    A missing edgekit module is a bug, and raises."""
    global _modules_loaded
    if _modules_loaded:
        return
    _modules_loaded = True
    for module in method_modules():
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name == module:
                continue
            if not exc.name or exc.name.split(".")[0] == __name__.split(".")[0]:
                _modules_loaded = False
                raise
            _UNLOADED[module] = exc.name


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
