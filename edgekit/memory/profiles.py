"""Device profiles: the memory a device offers a model (shipped JSON under ``profiles/``, your own file, or
``this-machine`` measured now).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch

from edgekit.core.errors import PlanError

GIB = 1024 ** 3


PROFILE_DIR = Path(__file__).resolve().parent / "profiles"


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
                            "or the path of your own JSON profile (see edgekit/memory/profiles/laptop-16gb.json)")
    try:
        raw = json.loads(path.read_text())
        return DeviceProfile(
            name=raw.get("name", path.stem), kind=raw["kind"], description=raw.get("description", ""),
            host_bytes=int(raw.get("host_gib", 0) * GIB),
            host_reserved_bytes=int(raw.get("host_reserved_gib", 0) * GIB),
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
