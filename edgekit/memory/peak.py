"""How a load peaks beyond the loaded model itself: the meaning and the arithmetic of each load kind a
registry entry names (full precision before packing, bitsandbytes' checkpoint copy, an exporter's graph,
layer-by-layer calibration, a training run's optimizer state), and when a load streams.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from edgekit.core.dtypes import config_dtype
from edgekit.core.errors import PlanError
from edgekit.core.paths import BATCH_SIZE, SAMPLES, SEQ_LEN
from edgekit.memory.bytes import activation_bytes, weight_bytes
from edgekit.memory.profiles import GIB
from edgekit.models.config import config_layout
from edgekit.models.layout import top_module
from edgekit.variants.registry import Variant


def streamed_load(cfg, variant: Variant, device_kind: str = "cpu") -> bool:
    """Whether a quantizing load reads the checkpoint tensor by tensor (edgekit.models.checkpoint):
    the option ``low_memory``; by default always on an accelerator (whose memory is the scarce
    one: loading in full precision first peaked at 1.6x the nf4 model on an H100) and on a CPU
    once the checkpoint is over 1 GiB."""
    return bool(variant.option("low_memory", device_kind != "cpu" or weight_bytes(cfg, config_dtype(cfg)) > GIB))


def layer_calibration_bytes(cfg, variant: Variant) -> int:
    """What calibrating one decoder layer holds beside the quantized model (:mod:`edgekit.quantizers.layerwise`): the
    layer in fp32, the calibration windows' hidden states into and out of it, one batch's forward through
    it, and its statistics: GPTQ's Hessian of each linear plus three [in, in] steps of the widest one's
    Cholesky factorization (AWQ's captured inputs and scale search are smaller)."""
    _, linears, _ = config_layout(cfg)
    first = top_module(linears[0][0] + ".weight")
    layer = [(out_f, in_f, bias) for name, out_f, in_f, bias in linears if top_module(name + ".weight") == first]
    seq_len = int(variant.option("seq_len", SEQ_LEN))
    states = 2 * int(variant.option("samples", SAMPLES)) * seq_len * cfg.hidden_size
    weights = sum(out_f * in_f + (out_f if bias else 0) for out_f, in_f, bias in layer)
    statistics = sum(in_f * in_f for _, in_f, _ in layer) + 3 * max(in_f for _, in_f, _ in layer) ** 2
    return 4 * (weights + states + statistics) + activation_bytes(cfg, seq_len, BATCH_SIZE, "fp32")


@dataclass(frozen=True)
class Load:
    """What the arithmetic of a load kind sees: the config as read, the variant, the steady state ``total``
    (weights, KV cache, activations, runtime) and its ``working`` part beside the weights, the device kind."""

    cfg: Any
    variant: Variant
    total: int
    working: int
    device_kind: str

    @property
    def fp32(self) -> int:
        return weight_bytes(self.cfg, "fp32")

    @property
    def streamed(self) -> bool:
        return streamed_load(self.cfg, self.variant, self.device_kind)


def _as_is(load: Load) -> tuple[int, str]:
    return load.total, "the checkpoint loads as it is held"


def _bitsandbytes(load: Load) -> tuple[int, str]:
    if load.streamed:
        return load.total, "quantized tensor by tensor while loading"
    return (load.total + weight_bytes(load.cfg, config_dtype(load.cfg)),
            "transformers holds the full-precision checkpoint while bitsandbytes quantizes it; "
            "the option low_memory=true quantizes while loading")


def _full_precision(load: Load) -> tuple[int, str]:
    return max(load.total, load.fp32 + load.working), "the model loads in full precision before it is quantized"


def _packed(load: Load) -> tuple[int, str]:
    if not load.streamed:
        return _full_precision(load)
    largest = max(out_f * in_f for _, out_f, in_f, _ in config_layout(load.cfg)[1])
    embedding = getattr(load.cfg, "vocab_size", 0) * getattr(load.cfg, "hidden_size", 0)
    return load.total + 4 * max(largest, embedding), "packed tensor by tensor while loading, one fp32 tensor at a time"


def _calibrated(load: Load) -> tuple[int, str]:
    job = layer_calibration_bytes(load.cfg, load.variant)
    if load.streamed:
        return (max(load.total, load.total - load.working + job),
                "calibrated layer by layer from the shards: one fp32 layer and its calibration activations at a time")
    return (max(load.total, load.fp32 + max(load.working, job)),
            "the model loads in full precision before it is calibrated")


def _training(load: Load) -> tuple[int, str]:
    return max(load.total, 5 * load.fp32 + load.working), "teacher, student, gradients and Adam's two moments in fp32"


def _export(load: Load) -> tuple[int, str]:
    return max(load.total, 2 * load.fp32 + load.working), "the exporter holds the fp32 model and the graph it writes"


def _streamed_export(load: Load) -> tuple[int, str]:
    return (max(load.total, 2 * (load.total - load.working) + load.working),
            "written from the checkpoint one tensor at a time; compiling holds the quantized model twice")


# How a load reaches its peak beyond the loaded model itself: what each kind an entry names (Entry.load) means,
# beside its arithmetic.
LOAD_KINDS: dict[str, tuple[str, Callable[[Load], tuple[int, str]]]] = {
    "as-is": ("the checkpoint loads at the variant's own dtype", _as_is),
    "bitsandbytes": ("transformers holds the full-precision checkpoint while bitsandbytes quantizes it, "
                     "unless it quantizes while loading (low_memory=true)", _bitsandbytes),
    "packed": ("packed tensor by tensor while loading (low_memory=true, the default over 1 GiB); "
               "else the model loads in fp32 before it is packed", _packed),
    "calibrated": ("calibrated layer by layer from the shards, one fp32 decoder layer and its calibration "
                   "activations at a time (low_memory=true, the default over 1 GiB); else the model loads in "
                   "fp32 before it is calibrated", _calibrated),
    "full-precision": ("the model loads in fp32 before it is quantized or packed", _full_precision),
    "training": ("teacher, student, gradients and Adam's two moments in fp32", _training),
    "export": ("the exporter holds the fp32 model and the graph it writes", _export),
    "streamed-export": ("the exporter reads the checkpoint one tensor at a time and writes the quantized artifact, "
                        "which the runtime then holds while compiling and loading it", _streamed_export),
}


def load_peak_bytes(cfg, variant: "str | Variant", total: int, working: int, device_kind: str) -> tuple[int, str]:
    """The most memory the load (or export, or training run) of ``variant`` holds at once, and why: the
    arithmetic of its entry's load kind (:data:`LOAD_KINDS`). ``total`` is the steady state (weights, KV
    cache, activations, runtime), ``working`` its part beside the weights."""
    variant = Variant.parse(variant)
    if variant.entry.load not in LOAD_KINDS:
        raise PlanError(f"variant {variant} names load kind {variant.entry.load!r}, which the planner does not "
                        f"price; its entry must use one of {', '.join(LOAD_KINDS)}")
    return LOAD_KINDS[variant.entry.load][1](Load(cfg, variant, total, working, device_kind))
