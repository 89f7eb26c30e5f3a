"""Memory planning from a model config alone: will this variant of this model fit that device?

The arithmetic follows the Hugging Face guides on model memory ("Model memory anatomy",
the accelerate "Big model inference" guide for ``device_map`` / ``max_memory``) and the
byte layouts of the quantizers themselves (Dettmers et al. 2022, *LLM.int8()*: int8 rows
plus one fp32 scale per row; Dettmers et al. 2023, *QLoRA*: 4-bit codes plus one absmax
per 64 weights, itself quantized to 8 bits under double quantization; edgekit's
:mod:`edgekit.packed`: b-bit codes plus an fp16 scale and a uint8 zero per group).

Nothing here reads weights. The model is built on PyTorch's ``meta`` device from its
config, so the parameter count is exact for any architecture transformers knows (grouped
KV heads, q/k/v biases, tied or untied heads) and every decoder linear layer is priced
under the scheme that will really hold it. On top of the weights come the KV cache for a
context and batch, an activation working set for one forward pass over the context, and
the runtime's own overhead; the sum is checked against a :class:`DeviceProfile` (shipped
as JSON in ``edgekit/profiles/``; pass a path for your own). When it does not fit, the
plan says what would (another variant, a shorter context) and lays out an accelerate
offload map (layers on the accelerator, then host memory, then disk) that
:func:`edgekit.guard.guarded_load` really passes to the loader.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import psutil
import torch

from edgekit.calibration import BATCH_SIZE, SAMPLES, SEQ_LEN
from edgekit.data import data_dir
from edgekit.errors import ModelSourceError, PlanError, VariantError
from edgekit.layout import block_linears, top_module
from edgekit.loading import model_config
from edgekit.registry import DTYPE_BYTES, Variant, offered_variants

GIB = 1024 ** 3
PROFILE_DIR = Path(__file__).resolve().parent / "profiles"
TORCH_DTYPE_NAMES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


# ---------------------------------------------------------------- model configs
def known_models() -> list[str]:
    """Short names of the shipped 7B-class configs (``data/configs/*.json``)."""
    return sorted(p.stem for p in (data_dir() / "configs").glob("*.json"))


def load_config(config: Any):
    """A transformers config from a known short name, a config.json path, a model folder,
    ``"default"``, a hub id, a dict (a pasted config) or a config object."""
    from transformers import PretrainedConfig

    if isinstance(config, PretrainedConfig):
        return config
    if isinstance(config, dict):
        return _config_from_dict(config, "the pasted config")
    text = str(config).strip()
    if text.startswith("{"):
        try:
            return _config_from_dict(json.loads(text), "the pasted config")
        except json.JSONDecodeError as exc:
            raise ModelSourceError(f"the pasted config is not valid JSON ({exc}); paste the whole config.json") from None
    known = data_dir() / "configs" / f"{text}.json"
    if known.exists():
        return _config_from_dict(json.loads(known.read_text()), text)
    path = Path(text).expanduser()
    if path.is_file():
        try:
            return _config_from_dict(json.loads(path.read_text()), str(path))
        except json.JSONDecodeError as exc:
            raise ModelSourceError(f"{path} is not a JSON config ({exc}); pass a config.json") from None
    if path.is_dir() and (path / "config.json").exists() and not any(path.glob("*.safetensors")):
        return _config_from_dict(json.loads((path / "config.json").read_text()), str(path))
    try:
        return model_config(text)
    except ModelSourceError as exc:
        raise ModelSourceError(f"{exc}; known short names: {', '.join(known_models())}") from None


def _config_from_dict(values: dict, origin: str):
    from transformers import AutoConfig

    values = dict(values)
    model_type = values.pop("model_type", None)
    if not model_type:
        raise ModelSourceError(f"{origin} has no model_type; paste a Hugging Face config.json (it names model_type)")
    try:
        return AutoConfig.for_model(model_type, **values)
    except ValueError as exc:
        raise ModelSourceError(f"{origin}: {exc}") from None


def config_dtype(config) -> str:
    """The checkpoint's dtype as fp32/bf16/fp16 (fp32 when the config does not say)."""
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    name = str(dtype).replace("torch.", "") if dtype is not None else "float32"
    return TORCH_DTYPE_NAMES.get(name, "fp32")


@lru_cache(maxsize=16)
def _meta_layout(config_json: str, model_type: str) -> tuple:
    """(parameter count, [(module, out, in, bias) for decoder linears], [(top module, numel)]) of a meta model."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(model_type, **{k: v for k, v in json.loads(config_json).items() if k != "model_type"})
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except (ValueError, KeyError) as exc:
        raise ModelSourceError(f"transformers cannot build a causal LM from this {model_type!r} config: {exc}") from None
    try:
        blocks = block_linears(model)
    except VariantError:  # no nn.Linear in its blocks (GPT-2's Conv1D): everything is priced as dense
        blocks = {}
    linears = [(name, m.out_features, m.in_features, m.bias is not None) for name, m in blocks.items()]
    in_linears = {f"{name}.{p}" for name, *_ in linears for p in ("weight", "bias")}
    others: dict[str, int] = {}
    for name, p in model.named_parameters():  # shared (tied) parameters are listed once
        if name not in in_linears:
            top = top_module(name)
            others[top] = others.get(top, 0) + p.numel()
    count = sum(p.numel() for p in model.parameters())
    return count, tuple(linears), tuple(others.items())


def _layout(config):
    return _meta_layout(config.to_json_string(use_diff=False), config.model_type)


def parameter_count(config) -> int:
    """Exact number of parameters (tied embeddings counted once)."""
    return _layout(load_config(config))[0]


# ---------------------------------------------------------------- bytes per scheme
def decoder_linears(config) -> list[str]:
    """Names of the decoder blocks' linear layers (``model.layers.3.mlp.down_proj``...), from the meta model."""
    return [name for name, *_ in _layout(load_config(config))[1]]


def linear_bytes(out_f: int, in_f: int, bias: bool, scheme: "str | Variant", dense: str) -> int:
    """Bytes one ``out_f x in_f`` linear layer occupies under ``scheme`` (its registry entry prices
    it); ``dense`` is the dtype (fp32/bf16/fp16) of what the scheme leaves unquantized (biases)."""
    variant = Variant.parse(scheme)
    return variant.entry.linear_bytes(variant, out_f, in_f, bias, dense)


def _dense_dtype(config, variant: "str | Variant") -> str:
    """Dtype of what stays unquantized, as the variant's registry entry says (given the checkpoint's)."""
    variant = Variant.parse(variant)
    return variant.entry.dense(variant, config_dtype(config))


def held_config(config, variant: "str | Variant"):
    """The config of the model as ``variant`` holds it: its registry entry's ``held_config`` where the
    variant changes shapes (structured pruning removes channels, KV groups, layers), else ``config``."""
    config, variant = load_config(config), Variant.parse(variant)
    return variant.entry.held_config(variant, config) if variant.entry.held_config else config


def module_bytes(config, variant: str, layer_schemes: dict[str, str] | None = None) -> dict[str, int]:
    """Weight bytes per top-level module in load order (embeddings, each decoder block, norm, head),
    at the shapes the variant holds (:func:`held_config`)."""
    config = held_config(config, variant)
    _, linears, others = _layout(config)
    dense = _dense_dtype(config, variant)
    layer_schemes = dict(layer_schemes or {})
    unknown = set(layer_schemes) - {name for name, *_ in linears}
    if unknown:
        raise VariantError(f"layer_schemes names layers this model does not have: {sorted(unknown)[:3]}; "
                           f"names look like {linears[0][0]}")
    sizes: dict[str, int] = {}
    for top, numel in others:
        sizes[top] = sizes.get(top, 0) + numel * DTYPE_BYTES[dense]
    for name, out_f, in_f, bias in linears:
        top = top_module(name + ".weight")
        sizes[top] = sizes.get(top, 0) + linear_bytes(out_f, in_f, bias, layer_schemes.get(name, variant), dense)
    order = lambda key: (0 if "embed" in key or key.endswith("wte") else 2 if not re.search(r"\.\d+$", key) else 1,
                         int(key.rsplit(".", 1)[-1]) if re.search(r"\.\d+$", key) else 0, "head" in key)
    return dict(sorted(sizes.items(), key=lambda kv: order(kv[0])))


def weight_bytes(config, variant: str, layer_schemes: dict[str, str] | None = None) -> int:
    """Bytes of the weights of ``config`` under ``variant``; ``layer_schemes`` maps decoder
    linear layers (``model.layers.3.mlp.down_proj``) to the variant they use instead."""
    return sum(module_bytes(config, variant, layer_schemes).values())


def activation_dtype(config, variant: str) -> str:
    """Dtype of activations and of the KV cache: the variant's compute dtype."""
    return _dense_dtype(config, variant)


def kv_cache_bytes(config, context: int, batch: int = 1, dtype: str = "fp16") -> int:
    """Keys and values of every layer for ``batch`` sequences of ``context`` tokens (a sliding-window layer's
    at most its window less one, as transformers holds them: Gemma 3's five local layers to one global one).

    ``dtype`` is fp32/bf16/fp16 or a llama.cpp cache type (``f16``, ``q8_0``, ``q4_0``...: its
    ``type_k``/``type_v``), priced by gguf's own table of block sizes: a row of one head's values is
    cut into blocks (q8_0: 32 int8 codes and an fp16 scale, 34 bytes; q4_0: 32 4-bit codes and a
    scale, 18 bytes), so the head dimension must be a multiple of the block."""
    config = load_config(config)
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    rows = 2 * config.num_hidden_layers * kv_heads * context * batch
    if dtype in DTYPE_BYTES:  # transformers' cache keeps a sliding-window layer's last ``sliding_window - 1`` positions
        window = getattr(config, "sliding_window", None)
        kinds = getattr(config, "layer_types", None) or ()
        positions = sum(min(context, window - 1) if kind == "sliding_attention" and window else context for kind in kinds)
        if kinds:
            rows = 2 * kv_heads * positions * batch
        return rows * head_dim * DTYPE_BYTES[dtype]
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        block, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType[dtype.upper()]]
    except KeyError:
        raise PlanError(f"unknown KV cache type {dtype!r}; use {', '.join(DTYPE_BYTES)} or a llama.cpp cache "
                        "type such as f16, q8_0, q4_0") from None
    if head_dim % block:
        raise PlanError(f"a {dtype} KV cache stores blocks of {block} values, and this model's heads have "
                        f"{head_dim}; use f16 or a type whose block divides {head_dim}")
    return rows * head_dim // block * block_bytes


def kv_cache_dtype(config, variant: "str | Variant") -> str:
    """What the KV cache is held in under ``variant``: its option ``kv`` (gguf-q4_0:kv=q8_0), else the
    variant's compute dtype."""
    variant = Variant.parse(variant)
    return variant.option("kv") or activation_dtype(config, variant)


def activation_bytes(config, context: int, batch: int = 1, dtype: str = "fp16") -> int:
    """Working set of one forward pass over ``context`` tokens (the prompt, the worst case).

    Per token: the residual stream, norm output and attention output (4 x hidden), q/k/v,
    the MLP's gate, up and product (3 x intermediate), one layer's attention scores
    (heads x context, as the math SDPA path on a CPU materializes them), plus fp32 logits
    over the vocabulary for every position. Layers run one after another, so one layer's
    intermediates are live at a time.
    """
    config = load_config(config)
    h, heads = config.hidden_size, config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or h // heads
    kv = 2 * (getattr(config, "num_key_value_heads", None) or heads) * head_dim
    intermediate = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * h
    per_token = 4 * h + heads * head_dim + kv + 3 * intermediate + heads * context
    return batch * context * (per_token * DTYPE_BYTES[dtype] + 4 * config.vocab_size)


# ---------------------------------------------------------------- device profiles
@dataclass(frozen=True)
class DeviceProfile:
    """Memory of a target: host RAM, and for a CUDA GPU or an NPU its own memory (on-chip/dedicated)."""

    name: str
    kind: str  # cpu | cuda | npu
    host_bytes: int
    host_reserved_bytes: int = 0
    accelerator_bytes: int = 0
    accelerator_reserved_bytes: int = 0
    runtime_overhead_bytes: int = GIB // 2
    unified: bool = False  # CPU and accelerator share one pool (Jetson, Apple silicon)
    runs: tuple[str, ...] = (".*",)
    description: str = ""

    @property
    def host_budget(self) -> int:
        return max(0, self.host_bytes - self.host_reserved_bytes)

    @property
    def accelerator_budget(self) -> int:
        return max(0, self.accelerator_bytes - self.accelerator_reserved_bytes)

    def can_run(self, variant_name: str) -> bool:
        return any(re.fullmatch(p, variant_name) for p in self.runs)


def device_profiles() -> list[str]:
    """Names of the shipped device profiles, plus ``this-machine`` (measured now)."""
    return sorted(p.stem for p in PROFILE_DIR.glob("*.json")) + ["this-machine"]


def load_profile(device: "str | Path | DeviceProfile") -> DeviceProfile:
    """A shipped profile by name, ``this-machine``, or your own JSON file by path."""
    if isinstance(device, DeviceProfile):
        return device
    text = str(device)
    if text == "this-machine":
        return this_machine()
    path = PROFILE_DIR / f"{text}.json"
    if not path.exists():
        path = Path(text).expanduser()
        if not path.is_file():
            raise PlanError(f"unknown device profile {text!r}; use one of {', '.join(device_profiles())} "
                            "or the path of your own JSON profile (see edgekit/profiles/laptop-16gb.json)")
    try:
        raw = json.loads(path.read_text())
        return DeviceProfile(
            name=raw.get("name", path.stem), kind=raw["kind"], description=raw.get("description", ""),
            host_bytes=int(raw.get("host_gib", 0) * GIB), host_reserved_bytes=int(raw.get("host_reserved_gib", 0) * GIB),
            accelerator_bytes=int(raw.get("accelerator_gib", 0) * GIB),
            accelerator_reserved_bytes=int(raw.get("accelerator_reserved_gib", 0) * GIB),
            runtime_overhead_bytes=int(raw.get("runtime_overhead_gib", 0.5) * GIB),
            unified=bool(raw.get("unified", False)), runs=tuple(raw.get("runs", [".*"])))
    except (KeyError, TypeError, ValueError) as exc:
        raise PlanError(f"device profile {path} is malformed ({exc!r}); it needs kind (cpu/cuda/npu), host_gib "
                        "and, for cuda/npu, accelerator_gib") from None


def this_machine(device: str = "cpu") -> DeviceProfile:
    """This process's machine now: available RAM (and free CUDA memory when ``device`` is cuda)."""
    available = psutil.virtual_memory().available
    if device == "cuda" and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info()
        return DeviceProfile("this-machine", "cuda", available, GIB // 2, free, GIB // 4, 0,
                             description="this machine now: free GPU memory and available RAM")
    # the runtime is already loaded in this process, so its overhead is already spent
    return DeviceProfile("this-machine", "cpu", available, GIB // 2, runtime_overhead_bytes=0,
                         description="this machine now: available RAM less a 0.5 GiB margin")


# ---------------------------------------------------------------- the plan
@dataclass
class MemoryPlan:
    model: str
    variant: str
    device: str
    device_kind: str
    context: int
    batch: int
    parameters: int
    weight_bytes: int
    kv_cache_bytes: int
    activation_bytes: int
    runtime_overhead_bytes: int
    total_bytes: int
    budget_bytes: int
    fits: bool
    verdict: str
    peak_bytes: int = 0   # the load's own peak (quantization, export, training included); fits needs it too
    peak_reason: str = ""
    offload: dict = field(default_factory=dict)
    alternatives: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        g = lambda b: f"{b / GIB:6.2f} GiB"
        lines = [f"{self.model} as {self.variant}, context {self.context} x batch {self.batch}, on {self.device} ({self.device_kind})",
                 f"  parameters      {self.parameters:,}",
                 f"  weights         {g(self.weight_bytes)}",
                 f"  KV cache        {g(self.kv_cache_bytes)}",
                 f"  activations     {g(self.activation_bytes)}",
                 f"  runtime         {g(self.runtime_overhead_bytes)}",
                 f"  total           {g(self.total_bytes)}   (budget {g(self.budget_bytes).strip()})",
                 *([f"  load peak       {g(self.peak_bytes)}   ({self.peak_reason})"] if self.peak_bytes > self.total_bytes else []),
                 f"  verdict: {self.verdict}"]
        if self.offload.get("device_map") and not self.fits:
            counts: dict[str, int] = {}
            for place in self.offload["device_map"].values():
                counts[str(place)] = counts.get(str(place), 0) + 1
            lines.append("  offload plan: " + ", ".join(f"{n} modules on {p}" for p, n in counts.items())
                         + f"; max_memory {self.offload['max_memory']}")
        return "\n".join(lines)


def plan_memory(config, variant: str, *, context: int = 4096, batch: int = 1,
                device: "str | DeviceProfile" = "laptop-16gb") -> MemoryPlan:
    """Plan ``config`` (short name, config.json, model folder, "default", hub id, dict) under
    ``variant`` for ``context`` tokens x ``batch`` on a device profile."""
    if context < 1 or batch < 1:
        raise PlanError(f"context ({context}) and batch ({batch}) must be at least 1")
    cfg = load_config(config)
    profile = load_profile(device)
    name = Variant.parse(variant).name
    plan = _plan(cfg, str(variant), context, batch, profile)
    plan.model = _model_name(config, cfg)
    if not profile.can_run(name):
        plan.fits = False
        plan.verdict = (f"{profile.name} cannot run {name}: it runs {', '.join(profile.runs)}. "
                        + alternatives_text(plan.alternatives))
    return plan


def _model_name(config, cfg) -> str:
    if isinstance(config, (str, Path)) and not str(config).lstrip().startswith("{"):
        return Path(str(config)).stem if str(config).endswith(".json") else str(config)
    return getattr(cfg, "_name_or_path", "") or cfg.model_type


def streamed_load(cfg, variant: Variant, device_kind: str = "cpu") -> bool:
    """Whether a quantizing load reads the checkpoint tensor by tensor (edgekit.quantize_on_load):
    the option ``low_memory``; by default always on an accelerator (whose memory is the scarce
    one: loading in full precision first peaked at 1.6x the nf4 model on an H100) and on a CPU
    once the checkpoint is over 1 GiB."""
    return bool(variant.option("low_memory", device_kind != "cpu" or weight_bytes(cfg, config_dtype(cfg)) > GIB))


def layer_calibration_bytes(cfg, variant: Variant) -> int:
    """What calibrating one decoder layer holds beside the quantized model (:mod:`edgekit.layerwise`): the
    layer in fp32, the calibration windows' hidden states into and out of it, one batch's forward through
    it, and its statistics: GPTQ's Hessian of each linear plus three [in, in] steps of the widest one's
    Cholesky factorization (AWQ's captured inputs and scale search are smaller)."""
    _, linears, _ = _layout(cfg)
    first = top_module(linears[0][0] + ".weight")
    layer = [(out_f, in_f, bias) for name, out_f, in_f, bias in linears if top_module(name + ".weight") == first]
    seq_len = int(variant.option("seq_len", SEQ_LEN))
    states = 2 * int(variant.option("samples", SAMPLES)) * seq_len * cfg.hidden_size
    weights = sum(out_f * in_f + (out_f if bias else 0) for out_f, in_f, bias in layer)
    statistics = sum(in_f * in_f for _, in_f, _ in layer) + 3 * max(in_f for _, in_f, _ in layer) ** 2
    return 4 * (weights + states + statistics) + activation_bytes(cfg, seq_len, BATCH_SIZE, "fp32")


def load_peak_bytes(cfg, variant: "str | Variant", total: int, working: int, device_kind: str) -> tuple[int, str]:
    """The most memory the load (or export, or training run) of ``variant`` holds at once, and why:
    the arithmetic of each load kind in :data:`edgekit.registry.LOAD_KINDS`. ``total`` is the
    steady state (weights, KV cache, activations, runtime), ``working`` its part beside the weights."""
    variant = Variant.parse(variant)
    kind = variant.entry.load
    fp32 = weight_bytes(cfg, "fp32")
    if kind == "bitsandbytes":
        if streamed_load(cfg, variant, device_kind):
            return total, "quantized tensor by tensor while loading"
        return total + weight_bytes(cfg, config_dtype(cfg)), ("transformers holds the full-precision checkpoint while bitsandbytes quantizes it; "
                                    "the option low_memory=true quantizes while loading")
    if kind == "packed" and streamed_load(cfg, variant, device_kind):
        largest = max(out_f * in_f for _, out_f, in_f, _ in _layout(cfg)[1])
        embedding = getattr(cfg, "vocab_size", 0) * getattr(cfg, "hidden_size", 0)
        return total + 4 * max(largest, embedding), "packed tensor by tensor while loading, one fp32 tensor at a time"
    if kind == "calibrated":
        job = layer_calibration_bytes(cfg, variant)
        if streamed_load(cfg, variant, device_kind):
            return (max(total, total - working + job),
                    "calibrated layer by layer from the shards: one fp32 layer and its calibration activations at a time")
        return max(total, fp32 + max(working, job)), "the model loads in full precision before it is calibrated"
    if kind in ("full-precision", "packed"):
        return max(total, fp32 + working), "the model loads in full precision before it is quantized"
    if kind == "training":
        return max(total, 5 * fp32 + working), "teacher, student, gradients and Adam's two moments in fp32"
    if kind == "export":
        return max(total, 2 * fp32 + working), "the exporter holds the fp32 model and the graph it writes"
    if kind == "streamed-export":
        return (max(total, 2 * (total - working) + working),
                "written from the checkpoint one tensor at a time; compiling holds the quantized model twice")
    return total, "the checkpoint loads as it is held"


def _plan(cfg, variant: str, context: int, batch: int, profile: DeviceProfile, suggest: bool = True) -> MemoryPlan:
    sizes = module_bytes(cfg, variant)
    dtype = activation_dtype(cfg, variant)
    weights = sum(sizes.values())
    held = held_config(cfg, variant)  # the load's peak below starts from cfg, the model as it is read
    kv = kv_cache_bytes(held, context, batch, kv_cache_dtype(cfg, variant))
    act = activation_bytes(held, context, batch, dtype)
    overhead = profile.runtime_overhead_bytes
    total = weights + kv + act + overhead
    peak, peak_reason = load_peak_bytes(cfg, variant, total, kv + act + overhead, profile.kind)
    on_accelerator = profile.kind in ("cuda", "npu")
    if on_accelerator and profile.unified:
        budget = profile.accelerator_budget
        fits = total <= budget
    elif profile.kind == "npu":  # the NPU reads what its own memory cannot hold from shared host RAM
        budget = profile.accelerator_budget + profile.host_budget
        fits = total <= budget
    elif on_accelerator:
        budget = profile.accelerator_budget
        fits = weights + kv + act <= budget and overhead <= profile.host_budget
    else:
        budget = profile.host_budget
        fits = total <= budget
    offload = _offload_plan(sizes, kv + act, overhead, profile, fits)
    # the load's own peak lands in host memory (an accelerator gets the weights after it); an export
    # happens on the machine that exports (the guard checks it there), not on the device it targets
    peak_budget = budget if not on_accelerator or profile.unified else profile.host_budget
    peak_fits = peak <= peak_budget or Variant.parse(variant).entry.load in ("export", "streamed-export")
    plan = MemoryPlan(str(cfg.model_type), variant, profile.name, profile.kind, context, batch, _layout(held)[0],
                      weights, kv, act, overhead, total, budget, fits and peak_fits, "", offload=offload,
                      peak_bytes=peak, peak_reason=peak_reason)
    if suggest and not plan.fits:
        plan.alternatives = _alternatives(cfg, variant, context, batch, profile)
    where = ("NPU and shared host memory" if profile.kind == "npu" else
             "accelerator memory" if on_accelerator and not profile.unified else "memory")
    if fits and not peak_fits:
        plan.verdict = (f"does not fit while loading: holding it takes {total / GIB:.2f} GiB, but the load peaks at "
                        f"{peak / GIB:.2f} GiB ({peak_reason}) and {profile.name} has {peak_budget / GIB:.2f} GiB usable. "
                        + alternatives_text(plan.alternatives))
    elif fits and profile.kind == "npu":
        host = offload["offloaded_bytes"]
        plan.verdict = (f"fits: {total / GIB:.2f} GiB of {budget / GIB:.2f} GiB usable: {(weights + kv + act - host) / GIB:.2f} GiB "
                        f"in NPU memory, {host / GIB:.2f} GiB of weights read from shared host RAM each token")
    elif fits:
        plan.verdict = f"fits: {total / GIB:.2f} GiB of {budget / GIB:.2f} GiB usable {where} ({100 * total / max(budget, 1):.0f}%)"
    else:
        plan.verdict = (f"does not fit: needs {(weights + kv + act + (0 if on_accelerator and not profile.unified else overhead)) / GIB:.2f} GiB, "
                        f"{profile.name} has {budget / GIB:.2f} GiB usable {where}. " + alternatives_text(plan.alternatives))
    return plan


def _offload_plan(sizes: dict[str, int], working_set: int, overhead: int, profile: DeviceProfile, fits: bool) -> dict:
    """accelerate ``device_map`` / ``max_memory``: modules in load order fill the accelerator
    (after the KV cache and activations), then host memory, then disk."""
    gpu = profile.kind in ("cuda", "npu") and not profile.unified
    first = 0 if profile.kind in ("cuda", "npu") else "cpu"
    if fits and (profile.kind != "npu" or sum(sizes.values()) + working_set <= profile.accelerator_budget):
        return {"device_map": {"": first}, "max_memory": {}, "offloaded_bytes": 0}
    tiers: list[tuple[Any, int]] = []
    if gpu:
        tiers.append((0, max(0, profile.accelerator_budget - working_set)))
        tiers.append(("cpu", max(0, profile.host_budget - overhead)))
    elif profile.unified:
        tiers.append((0, max(0, profile.accelerator_budget - working_set - overhead)))
    else:
        tiers.append(("cpu", max(0, profile.host_budget - working_set - overhead)))
    device_map: dict[str, Any] = {}
    used = {place: 0 for place, _ in tiers}
    tier = 0
    for module, size in sizes.items():
        while tier < len(tiers) and used[tiers[tier][0]] + size > tiers[tier][1]:
            tier += 1
        place = tiers[tier][0] if tier < len(tiers) else "disk"
        device_map[module] = place
        if place != "disk":
            used[place] += size
    max_memory = {place: int(budget) for place, budget in tiers}
    offloaded = sum(s for m, s in sizes.items() if device_map[m] != first)
    return {"device_map": device_map, "max_memory": max_memory, "offloaded_bytes": offloaded}


def _alternatives(cfg, variant: str, context: int, batch: int, profile: DeviceProfile) -> dict:
    """What would fit instead: the variants pickers offer whose plan (load peak included) fits at
    this context, heaviest first (the least quality lost), and the longest context that fits
    with this variant. The advice uses the guard's own arithmetic, so it names only what the
    guard admits."""
    plans = [_plan(cfg, v, context, batch, profile, suggest=False) for v in offered_variants()
             if v != variant and profile.can_run(Variant.parse(v).name) and _applies(cfg, v)]
    fitting = [p.variant for p in sorted((p for p in plans if p.fits), key=lambda p: -p.weight_bytes)]
    longest = None
    c = context // 2
    while c >= 128:
        if _plan(cfg, variant, c, batch, profile, suggest=False).fits:
            longest = c
            break
        c //= 2
    return {"variants": fitting, "context": longest}


def _applies(cfg, variant: str) -> bool:
    """Whether ``variant`` can shape this model at all (prune-heads-50% cannot split one KV head)."""
    try:
        held_config(cfg, variant)
    except VariantError:
        return False
    return True


def alternatives_text(alternatives: dict, offload: bool = True) -> str:
    """"Would fit: ..." from a plan's alternatives (variants named first, best quality first)."""
    parts = []
    if alternatives.get("variants"):
        parts.append(f"variant {' or '.join(alternatives['variants'][:3])}")
    if alternatives.get("context"):
        parts.append(f"context {alternatives['context']}")
    if offload:
        parts.append("offload (the option offload=true on fp32/bf16/fp16: slow, every token reads offloaded layers)")
    return ("Would fit: " + "; ".join(parts) + ".") if parts else "Nothing offered fits; use a machine with more memory."
