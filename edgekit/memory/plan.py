"""Memory planning from a model config alone: will this variant of this model fit that device?

The arithmetic follows the Hugging Face guides on model memory ("Model memory anatomy",
the accelerate "Big model inference" guide for ``device_map`` / ``max_memory``) and the
byte layouts of the quantizers themselves (Dettmers et al. 2022, *LLM.int8()*: int8 rows
plus one fp32 scale per row; Dettmers et al. 2023, *QLoRA*: 4-bit codes plus one absmax
per 64 weights, itself quantized to 8 bits under double quantization; edgekit's
:mod:`edgekit.quantizers.packed`: b-bit codes plus an fp16 scale and a uint8 zero per group).

Nothing here reads weights. The model is built on PyTorch's ``meta`` device from its
config, so the parameter count is exact for any architecture transformers knows (grouped
KV heads, q/k/v biases, tied or untied heads) and every decoder linear layer is priced
under the scheme that will really hold it. On top of the weights come the KV cache for a
context and batch, an activation working set for one forward pass over the context, and
the runtime's own overhead; the sum is checked against a :class:`DeviceProfile` (shipped
as JSON in ``edgekit/memory/profiles/``; pass a path for your own). When it does not fit, the
plan says what would (another variant, a shorter context) and lays out an accelerate
offload map (layers on the accelerator, then host memory, then disk) that
:func:`edgekit.memory.guard.guarded_load` really passes to the loader.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgekit.core.errors import PlanError, VariantError
from edgekit.memory.bytes import (
    activation_bytes,
    activation_dtype,
    held_config,
    kv_cache_bytes,
    kv_cache_dtype,
    module_bytes,
)
from edgekit.memory.peak import load_peak_bytes
from edgekit.memory.profiles import GIB, DeviceProfile, load_profile
from edgekit.models.config import config_layout, load_config
from edgekit.variants.registry import Variant, offered_variants


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
        lines = [f"{self.model} as {self.variant}, context {self.context} x batch {self.batch}, on {self.device} "
                 f"({self.device_kind})",
                 f"  parameters      {self.parameters:,}",
                 f"  weights         {g(self.weight_bytes)}",
                 f"  KV cache        {g(self.kv_cache_bytes)}",
                 f"  activations     {g(self.activation_bytes)}",
                 f"  runtime         {g(self.runtime_overhead_bytes)}",
                 f"  total           {g(self.total_bytes)}   (budget {g(self.budget_bytes).strip()})",
                 *([f"  load peak       {g(self.peak_bytes)}   ({self.peak_reason})"]
                   if self.peak_bytes > self.total_bytes else []),
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
    plan = MemoryPlan(str(cfg.model_type), variant, profile.name, profile.kind, context, batch, config_layout(held)[0],
                      weights, kv, act, overhead, total, budget, fits and peak_fits, "", offload=offload,
                      peak_bytes=peak, peak_reason=peak_reason)
    if suggest and not plan.fits:
        plan.alternatives = _alternatives(cfg, variant, context, batch, profile)
    where = ("NPU and shared host memory" if profile.kind == "npu" else
             "accelerator memory" if on_accelerator and not profile.unified else "memory")
    if fits and not peak_fits:
        plan.verdict = (f"does not fit while loading: holding it takes {total / GIB:.2f} GiB, but the load peaks at "
                        f"{peak / GIB:.2f} GiB ({peak_reason}) and {profile.name} has {peak_budget / GIB:.2f} GiB "
                        f"usable. "
                        + alternatives_text(plan.alternatives))
    elif fits and profile.kind == "npu":
        host = offload["offloaded_bytes"]
        plan.verdict = (f"fits: {total / GIB:.2f} GiB of {budget / GIB:.2f} GiB usable: "
                        f"{(weights + kv + act - host) / GIB:.2f} GiB "
                        f"in NPU memory, {host / GIB:.2f} GiB of weights read from shared host RAM each token")
    elif fits:
        plan.verdict = (f"fits: {total / GIB:.2f} GiB of {budget / GIB:.2f} GiB usable {where} "
                        f"({100 * total / max(budget, 1):.0f}%)")
    else:
        plan.verdict = (
            f"does not fit: needs "
            f"{(weights + kv + act + (0 if on_accelerator and not profile.unified else overhead)) / GIB:.2f} GiB, "
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
    return (("Would fit: " + "; ".join(parts) + ".") if parts
            else "Nothing offered fits; use a machine with more memory.")
