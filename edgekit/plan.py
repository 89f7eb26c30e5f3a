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
:func:`guarded_load` really passes to the loader.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import psutil
import torch

from edgekit.data import data_dir
from edgekit.errors import ModelSourceError, PlanError, VariantError

GIB = 1024 ** 3
PROFILE_DIR = Path(__file__).resolve().parent / "profiles"
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
_TORCH_DTYPE_NAMES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
# GGUF block formats, bits per weight including their per-block scales (llama.cpp ggml-quants)
_GGUF_BITS = {"f32": 32, "f16": 16, "bf16": 16, "q8_0": 8.5, "q6_k": 6.5625, "q5_k_m": 5.5, "q5_0": 5.5,
              "q4_k_m": 4.5, "q4_0": 4.5, "q4_1": 5.0, "q3_k_m": 3.4375, "q2_k": 2.625}
# Variants that compute in an accelerate offload map (hooks move dense weights in and out)
_OFFLOADABLE = ("fp32", "bf16", "fp16")


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
    from edgekit.loading import model_config

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
    return _TORCH_DTYPE_NAMES.get(name, "fp32")


@lru_cache(maxsize=16)
def _meta_layout(config_json: str, model_type: str) -> tuple:
    """(parameter count, [(module, out, in, bias) for decoder linears], [(top module, numel)]) of a meta model."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from edgekit.packed import block_linears

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
            top = _top_module(name)
            others[top] = others.get(top, 0) + p.numel()
    count = sum(p.numel() for p in model.parameters())
    return count, tuple(linears), tuple(others.items())


def _layout(config):
    return _meta_layout(config.to_json_string(use_diff=False), config.model_type)


def _top_module(param_name: str) -> str:
    """``model.layers.3.mlp.up_proj.weight`` -> ``model.layers.3``; ``lm_head.weight`` -> ``lm_head``."""
    match = re.match(r"(.*?\.(?:layers|h)\.\d+)\.", param_name)
    return match.group(1) if match else param_name.rsplit(".", 1)[0]


def parameter_count(config) -> int:
    """Exact number of parameters (tied embeddings counted once)."""
    return _layout(load_config(config))[0]


# ---------------------------------------------------------------- bytes per scheme
def _split_variant(variant: str) -> tuple[str, dict]:
    from edgekit.variants import Variant, _parse_options

    if isinstance(variant, Variant):
        return variant.name, dict(variant.options)
    name, _, opts = str(variant).strip().partition(":")
    return name, dict(_parse_options(opts, name))


def linear_bytes(out_f: int, in_f: int, bias: bool, scheme: str, dense: str) -> int:
    """Bytes one ``out_f x in_f`` linear layer occupies under ``scheme``; ``dense`` is the
    dtype (fp32/bf16/fp16) of what the scheme leaves unquantized (biases)."""
    name, options = _split_variant(scheme)
    n = out_f * in_f
    bias_bytes = out_f * DTYPE_BYTES[dense] if bias else 0
    if name in DTYPE_BYTES or name == "onnx-fp32":
        return (n + (out_f if bias else 0)) * DTYPE_BYTES.get(name, 4)
    if name == "int8":  # LLM.int8: int8 rows + one fp32 scale per row (SCB)
        return n + 4 * out_f + bias_bytes
    if name in ("nf4", "fp4"):  # 4-bit codes, absmax per 64 weights
        blocks = math.ceil(n / 64)
        if options.get("double_quant"):  # absmax as uint8 + fp32 absmax per 256 of them + 256-entry fp32 code
            absmax = blocks + 4 * math.ceil(blocks / 256) + 4 * 256
        else:
            absmax = 4 * blocks
        return math.ceil(n / 2) + absmax + bias_bytes
    packed = re.fullmatch(r"(?:gptq-|awq-|qat-|ov-|onnx-)?int(\d)-g(\d+)", name)
    if packed:  # b-bit codes + fp16 scale + uint8 zero per group (fp32 bias in PackedLinear)
        bits, group = int(packed.group(1)), int(packed.group(2))
        groups = out_f * math.ceil(in_f / group)
        return math.ceil(n * bits / 8) + 3 * groups + (4 * out_f if bias else 0)
    mixed = re.fullmatch(r"mixed-(?:(?:gptq|awq)-)?int(\d)-g(\d+)-k\d+", name)
    if mixed:  # without the layer list, priced as the base scheme (see weight_bytes(layer_schemes=...))
        return linear_bytes(out_f, in_f, bias, f"int{mixed.group(1)}-g{mixed.group(2)}", dense)
    if name in ("onnx-int8", "ov-int8"):  # per-channel int8 + fp32 scale + int8 zero point
        return n + 5 * out_f + (4 * out_f if bias else 0)
    gguf = re.fullmatch(r"gguf-(\w+)", name)
    if gguf and gguf.group(1).lower() in _GGUF_BITS:
        return math.ceil(n * _GGUF_BITS[gguf.group(1).lower()] / 8) + (4 * out_f if bias else 0)
    raise VariantError(f"cannot plan variant {name!r}; plannable: fp32, bf16, fp16, int8, nf4, fp4, intB-gG "
                       f"(B in 2,3,4,8), gptq-/awq-int4-gG, mixed-int4-gG-kK, onnx-fp32/int8/int4-gG, "
                       f"ov-int8/int4-gG, gguf-{{{','.join(_GGUF_BITS)}}}")


def _dense_dtype(config, variant: str) -> str:
    """Dtype of what stays unquantized: the variant's own for fp32/bf16/fp16, else the
    ``compute_dtype`` option, else the checkpoint's (fp32 for the default model)."""
    name, options = _split_variant(variant)
    if name in DTYPE_BYTES:
        return name
    if name.startswith(("onnx-", "gguf-", "ov-")):
        return "fp32" if name.startswith("onnx-") else "fp16"
    compute = options.get("compute_dtype")
    if compute is not None and compute not in DTYPE_BYTES:
        raise VariantError(f"compute_dtype={compute!r}; choose one of {', '.join(DTYPE_BYTES)}")
    return compute or config_dtype(config)


def module_bytes(config, variant: str, layer_schemes: dict[str, str] | None = None) -> dict[str, int]:
    """Weight bytes per top-level module in load order (embeddings, each decoder block, norm, head)."""
    config = load_config(config)
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
        top = _top_module(name + ".weight")
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
    """Keys and values of every layer for ``batch`` sequences of ``context`` tokens."""
    config = load_config(config)
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    return 2 * config.num_hidden_layers * kv_heads * head_dim * context * batch * DTYPE_BYTES[dtype]


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
    name, _ = _split_variant(variant)
    plan = _plan(cfg, str(variant), context, batch, profile)
    plan.model = _model_name(config, cfg)
    if not profile.can_run(name):
        plan.fits = False
        plan.verdict = (f"{profile.name} cannot run {name}: it runs {', '.join(profile.runs)}. "
                        + _alternatives_text(plan.alternatives))
    return plan


def _model_name(config, cfg) -> str:
    if isinstance(config, (str, Path)) and not str(config).lstrip().startswith("{"):
        return Path(str(config)).stem if str(config).endswith(".json") else str(config)
    return getattr(cfg, "_name_or_path", "") or cfg.model_type


def _plan(cfg, variant: str, context: int, batch: int, profile: DeviceProfile, suggest: bool = True) -> MemoryPlan:
    name, _ = _split_variant(variant)
    sizes = module_bytes(cfg, variant)
    dtype = activation_dtype(cfg, variant)
    weights = sum(sizes.values())
    kv = kv_cache_bytes(cfg, context, batch, dtype)
    act = activation_bytes(cfg, context, batch, dtype)
    overhead = profile.runtime_overhead_bytes
    total = weights + kv + act + overhead
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
    plan = MemoryPlan(str(cfg.model_type), variant, profile.name, profile.kind, context, batch, _layout(cfg)[0],
                      weights, kv, act, overhead, total, budget, fits, "", offload)
    if suggest and not fits:
        plan.alternatives = _alternatives(cfg, variant, context, batch, profile)
    where = ("NPU and shared host memory" if profile.kind == "npu" else
             "accelerator memory" if on_accelerator and not profile.unified else "memory")
    if fits and profile.kind == "npu":
        host = offload["offloaded_bytes"]
        plan.verdict = (f"fits: {total / GIB:.2f} GiB of {budget / GIB:.2f} GiB usable: {(weights + kv + act - host) / GIB:.2f} GiB "
                        f"in NPU memory, {host / GIB:.2f} GiB of weights read from shared host RAM each token")
    elif fits:
        plan.verdict = f"fits: {total / GIB:.2f} GiB of {budget / GIB:.2f} GiB usable {where} ({100 * total / max(budget, 1):.0f}%)"
    else:
        plan.verdict = (f"does not fit: needs {(weights + kv + act + (0 if on_accelerator and not profile.unified else overhead)) / GIB:.2f} GiB, "
                        f"{profile.name} has {budget / GIB:.2f} GiB usable {where}. " + _alternatives_text(plan.alternatives))
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


_LADDER = ("fp16", "int8", "int4-g128", "nf4", "int3-g128", "int2-g64", "onnx-int8", "onnx-int4-g128", "gguf-q4_0")


def _alternatives(cfg, variant: str, context: int, batch: int, profile: DeviceProfile) -> dict:
    """What would fit instead: the lightest-first variants that fit at this context, the
    longest context that fits with this variant, and how much the offload plan moves off."""
    fitting = [v for v in _LADDER if v != variant and profile.can_run(v)
               and _plan(cfg, v, context, batch, profile, suggest=False).fits]
    longest = None
    c = context // 2
    while c >= 128:
        if _plan(cfg, variant, c, batch, profile, suggest=False).fits:
            longest = c
            break
        c //= 2
    return {"variants": fitting, "context": longest}


def _alternatives_text(alternatives: dict) -> str:
    parts = []
    if alternatives.get("variants"):
        parts.append(f"variant {' or '.join(alternatives['variants'][:3])}")
    if alternatives.get("context"):
        parts.append(f"context {alternatives['context']}")
    parts.append("offload (add the option offload=true to the variant: slow, every token reads offloaded layers)")
    return "Would fit: " + "; ".join(parts) + "."


# ---------------------------------------------------------------- guarded loading
def guarded_load(variant, source: str, device: str = "cpu", **load_kwargs):
    """Load a PyTorch variant only if its plan fits this machine now; otherwise raise
    :class:`PlanError` saying what would fit.

    Variant options read here: ``context`` (default: 2048 or the model's maximum, the
    context the plan reserves KV cache and activations for), ``profile`` (plan against a
    device profile instead of this machine's available memory), ``offload=true`` (load
    with the plan's accelerate ``device_map`` / ``max_memory``, spilling layers to disk,
    fp32/bf16/fp16 only), ``low_memory=true|false`` (force or forbid quantize-on-load for
    bitsandbytes variants; by default it is used once the checkpoint is over 1 GiB).
    The check counts the load itself: transformers holds the checkpoint in full precision
    before bitsandbytes quantizes it, and packed variants load fp32 before packing.
    """
    from edgekit.loading import load_model, model_config
    from edgekit.results import work_dir
    from edgekit.variants import Variant

    variant = Variant.parse(variant)
    config = model_config(source)
    context = int(variant.option("context", min(2048, getattr(config, "max_position_embeddings", None) or 2048)))
    profile = load_profile(variant.option("profile")) if variant.option("profile") else this_machine(device)
    plan = plan_memory(config, str(variant), context=context, device=profile)
    quant = load_kwargs.get("quantization_config")
    bnb = quant is not None and bool(getattr(quant, "load_in_4bit", False) or getattr(quant, "load_in_8bit", False))
    checkpoint = weight_bytes(config, config_dtype(config))
    stream = bnb and device == "cpu" and bool(variant.option("low_memory", checkpoint > GIB))
    working = plan.kv_cache_bytes + plan.activation_bytes + plan.runtime_overhead_bytes
    if stream:
        peak = plan.total_bytes
    elif bnb:
        peak = plan.total_bytes + checkpoint
    else:
        load_dtype = str(load_kwargs.get("dtype", torch.float32)).replace("torch.", "")
        peak = max(plan.total_bytes, weight_bytes(config, _TORCH_DTYPE_NAMES.get(load_dtype, "fp32")) + working)
    offload = bool(variant.option("offload", False))
    if peak > plan.budget_bytes and not offload:
        raise PlanError(_refusal(variant, source, plan, peak, bnb, stream))
    if stream:
        from edgekit.quantize_on_load import load_bnb_quantized

        return load_bnb_quantized(source, quant, device)
    if offload and peak > plan.budget_bytes:
        if variant.name not in _OFFLOADABLE:
            raise PlanError(f"offload works with {', '.join(_OFFLOADABLE)} in edgekit; {variant.name} does not fit "
                            f"either. {_refusal(variant, source, plan, peak, bnb, stream)}")
        folder = work_dir() / "offload" / re.sub(r"\W+", "_", str(source))[-60:]
        return load_model(source, device_map=plan.offload["device_map"], max_memory=plan.offload["max_memory"],
                          offload_folder=str(folder), **load_kwargs)
    return load_model(source, device_map={"": device}, **load_kwargs)


def _refusal(variant, source: str, plan: MemoryPlan, peak: int, bnb: bool, stream: bool) -> str:
    why = (" (transformers holds the full-precision checkpoint while bitsandbytes quantizes it; "
           "the option low_memory=true quantizes while loading)" if bnb and not stream else
           " (the model loads in full precision before it is packed)" if peak > plan.total_bytes else "")
    text = (f"refusing to load {source} as {variant}: it needs about {peak / GIB:.2f} GiB{why} at context "
            f"{plan.context}, and {plan.device} has {plan.budget_bytes / GIB:.2f} GiB usable. ")
    return text + (_alternatives_text(plan.alternatives) if plan.alternatives else
                   "Would fit: nf4 or int8 (bitsandbytes, quantized while loading: low_memory=true), or a 16-bit "
                   "variant with offload=true (fp16:offload=true).")
