"""The load guard: the one door every model load, export, artifact load and training run in edgekit passes.

Before any weight is read, :func:`admit` plans the variant for this machine (or a device
profile) with :func:`edgekit.memory.plan.plan_memory`, which prices the load's own peak as the variant's
registry entry describes it (full precision before packing, bitsandbytes' checkpoint copy, an
exporter's graph, a training run's optimizer state), and refuses with a :class:`PlanError`
that names what would fit — advice drawn from the same arithmetic, so the guard admits it.

Variant options read here (every PyTorch variant accepts them): ``context`` (default: 2048 or
the model's maximum; the context the plan reserves KV cache and activations for), ``profile``
(plan against a device profile instead of this machine's available memory), ``offload=true``
(load with the plan's accelerate ``device_map`` / ``max_memory``, spilling layers to disk;
fp32/bf16/fp16 only), ``low_memory=true|false`` (force or forbid quantize-on-load for
bitsandbytes variants; by default it is used once the checkpoint is over 1 GiB), ``device``.
"""
from __future__ import annotations

import re

import torch

from edgekit.core.dtypes import OFFLOADABLE
from edgekit.core.errors import PlanError
from edgekit.core.paths import work_dir
from edgekit.memory.plan import MemoryPlan, alternatives_text, plan_memory
from edgekit.memory.profiles import GIB, load_profile, this_machine
from edgekit.models.load import load_model, model_config
from edgekit.models.runner import TorchRunner
from edgekit.variants.registry import Variant, device_of


def _plan_here(variant: Variant, source: str, device: str) -> tuple[MemoryPlan, bool]:
    """The plan on this machine (or the ``profile`` option's device) and whether the guard admits it."""
    config = model_config(source)
    context = int(variant.option("context", min(2048, getattr(config, "max_position_embeddings", None) or 2048)))
    profile = load_profile(variant.option("profile")) if variant.option("profile") else this_machine(device)
    plan = plan_memory(config, variant, context=context, device=profile)
    fits = plan.fits and plan.peak_bytes <= plan.budget_bytes  # an export's peak too, where it runs
    return plan, fits or bool(variant.option("offload") and variant.name in OFFLOADABLE)


def admit(variant: "str | Variant", source: str, device: str = "cpu", what: str = "load",
          advice: str | None = None) -> MemoryPlan:
    """The plan of ``variant`` of ``source`` if it fits this machine (load peak included); else
    :class:`PlanError` saying what would fit (or ``advice``, for a job no other variant can do).
    Reads the config only, never a weight."""
    variant = Variant.parse(variant)
    plan, admitted = _plan_here(variant, source, device)
    if not admitted:
        raise PlanError(refusal(variant, source, plan, device, what, advice))
    return plan


def guarded_load(variant: "str | Variant", source: str, device: str = "cpu", **load_kwargs):
    """Load a PyTorch variant with ``from_pretrained`` only if :func:`admit` lets it (spilling to disk where
    it was admitted only because ``offload=true``). Methods that quantize while loading admit first and then
    load in their own module (:mod:`edgekit.quantizers.packed`, :mod:`edgekit.quantizers.bitsandbytes`)."""
    variant = Variant.parse(variant)
    plan = admit(variant, source, device)
    if not plan.fits:  # admitted only because offload=true: spill what does not fit
        folder = work_dir() / "offload" / re.sub(r"\W+", "_", str(source))[-60:]
        return load_model(source, device_map=plan.offload["device_map"], max_memory=plan.offload["max_memory"],
                          offload_folder=str(folder), **load_kwargs)
    return load_model(source, device_map={"": device}, **load_kwargs)


def torch_runner(variant: Variant, source: str, tokenizer, **kwargs) -> TorchRunner:
    """A Runner of a ``from_pretrained`` load admitted by the guard (offload=true chooses how)."""
    model = guarded_load(variant, source, device_of(variant), **kwargs)
    return TorchRunner(str(variant), model, tokenizer)


def guarded_fp32_load(variant: "str | Variant", source: str, device: str = "cpu", what: str = "load",
                      advice: str | None = None):
    """The fp32 model a calibrated / sensitivity / training path starts from, admitted under ``variant``
    (whose registry entry prices the whole job's peak)."""
    admit(variant, source, device, what, advice)
    return load_model(source, device_map={"": device}, dtype=torch.float32)


def admit_artifact(manifest, profile: str | None = None) -> int:
    """The bytes of a verified artifact's files (what its runtime maps or reads into memory: weights,
    graph, tokenizer) if this machine (or device ``profile``) holds them; else :class:`PlanError`.
    Reads the manifest only, so an artifact too big for the host is refused, not killed for memory."""
    need = sum(info["bytes"] for info in manifest.data["files"].values())
    device = load_profile(profile) if profile else this_machine()
    if need > device.host_budget:
        raise PlanError(f"refusing to load artifact {manifest.variant}: its files hold {need / GIB:.2f} GiB and "
                        f"{device.name} has {device.host_budget / GIB:.2f} GiB usable; free memory or export a "
                        "smaller variant")
    return need


def refusal(variant: Variant, source: str, plan: MemoryPlan, device: str = "cpu", what: str = "load",
            advice: str | None = None) -> str:
    """One line: what was refused, what it needs, and only alternatives this guard itself admits (or ``advice``)."""
    need = max(plan.total_bytes, plan.peak_bytes)
    why = f" ({plan.peak_reason})" if plan.peak_bytes > plan.total_bytes else ""
    refused = (f"refusing to {what} {source} as {variant}: it needs about {need / GIB:.2f} GiB{why} at context "
               f"{plan.context}, and {plan.device} has {plan.budget_bytes / GIB:.2f} GiB usable.")
    if advice:
        return f"{refused} {advice}"
    profile = dict(variant.options).get("profile")
    admitted = []
    for name in plan.alternatives.get("variants", []):
        candidate = Variant.parse(name)
        if profile and candidate.family != "pytorch":
            continue  # only PyTorch variants load against a device profile; the others export here
        if profile:
            candidate = candidate.with_options(profile=profile)
        if _plan_here(candidate, source, device)[1]:
            admitted.append(name)
    return (f"{refused} "
            f"{alternatives_text({**plan.alternatives, 'variants': admitted}, offload=variant.name in OFFLOADABLE)}")
