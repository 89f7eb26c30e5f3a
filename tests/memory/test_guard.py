"""The load guard is the one door: every loader in the library is refused before it reads a weight."""
import json
import shutil

import pytest

from edgekit.core.errors import PlanError
from edgekit.core.paths import data_dir
from edgekit.memory.guard import admit
from edgekit.memory.profiles import GIB
from edgekit.runtimes import build_runner, export_artifact
from edgekit.variants.registry import Variant

SIDE = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@pytest.fixture(scope="module")
def huge_model(tmp_path_factory, default_model):
    """A 70B-shaped Llama config whose "weights" are not a checkpoint: reading them would fail loudly,
    with anything but the guard's PlanError."""
    folder = tmp_path_factory.mktemp("llama-70b-shaped")
    config = json.loads((data_dir() / "configs" / "llama-2-7b.json").read_text())
    config.update(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                  num_key_value_heads=8)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").write_bytes(b"not a checkpoint: the guard must refuse before reading this")
    for name in SIDE:
        shutil.copy(f"{default_model}/{name}", folder / name)
    return str(folder)


def _refused(call, *args, **kwargs) -> str:
    with pytest.raises(PlanError) as err:
        call(*args, **kwargs)
    message = str(err.value)
    assert "\n" not in message and "refusing to" in message
    return message


@pytest.mark.parametrize("variant", ["fp32", "nf4", "int4-g128", "int2-g64", "gptq-int4-g128", "awq-int3-g128",
                                     "mixed-int4-g128-k4", "qat-int2-g64"])
def test_every_pytorch_family_is_refused_before_a_weight_is_read(variant, huge_model):
    _refused(build_runner, variant, huge_model)


@pytest.mark.parametrize("variant", ["onnx-int8", "ov-int4-g128", "gguf-q4_0"])
def test_every_export_is_refused_before_it_starts(variant, huge_model, tmp_path):
    assert "refusing to export" in _refused(export_artifact, variant, huge_model, tmp_path / "artifact")


def test_sensitivity_and_qat_go_through_the_guard(huge_model):
    from edgekit.quantizers.qat import qat_finetune
    from edgekit.quantizers.sensitivity import layer_sensitivity

    assert "rank the layers of" in _refused(layer_sensitivity, huge_model, "int4-g128")
    assert "fine-tune" in _refused(qat_finetune, huge_model)


def test_mixed_precision_names_its_layers_from_the_meta_model(huge_model):
    from edgekit.quantizers.mixed import mixed_layer_schemes

    with pytest.raises(PlanError):  # the names come free; the ranking behind them is guarded
        mixed_layer_schemes("mixed-int4-g128-k4", huge_model)


@pytest.fixture(scope="module")
def seven_b(tmp_path_factory, default_model):
    folder = tmp_path_factory.mktemp("llama-2-7b-shaped")
    shutil.copy(data_dir() / "configs" / "llama-2-7b.json", folder / "config.json")
    (folder / "model.safetensors").write_bytes(b"not a checkpoint")
    for name in SIDE:
        shutil.copy(f"{default_model}/{name}", folder / name)
    return str(folder)


def test_the_advice_names_only_what_the_guard_admits(seven_b):
    """A 7B as fp32 on a 16 GB laptop: every variant the refusal offers is admitted by the same guard."""
    message = _refused(admit, "fp32:profile=laptop-16gb", seven_b)
    offered = message.split("Would fit: variant ", 1)[1].split(";")[0].split(" or ")
    assert offered, message
    for name in offered:
        variant = Variant.parse(name)
        admit(variant.with_options(profile="laptop-16gb") if variant.family == "pytorch" else variant, seven_b)


class _Memory:
    """What ``psutil.virtual_memory()`` reports, faked: the guard budgets this machine by ``available``."""

    def __init__(self, available: int) -> None:
        self.available = available


@pytest.fixture
def available_ram(monkeypatch):
    """Set the RAM the guard sees as available on this machine, in GiB."""
    return lambda gib: monkeypatch.setattr("edgekit.memory.profiles.psutil.virtual_memory",
                                           lambda: _Memory(int(gib * GIB)))


@pytest.mark.parametrize("variant", ["onnx-int4-g32", "ov-int4-g128", "gguf-q4_0"])
def test_streamed_exports_of_a_7b_fit_20_gib_and_are_refused_on_a_tiny_budget(variant, seven_b, available_ram,
                                                                               tmp_path):
    available_ram(20.5)  # a 24 GB machine with others at work: 20 GiB usable after the guard's margin
    plan = admit(variant, seven_b, what="export")
    assert plan.peak_bytes < 20 * GIB and "one tensor at a time" in plan.peak_reason
    available_ram(1)
    out = tmp_path / "artifact"
    assert "refusing to export" in _refused(export_artifact, variant, seven_b, out)
    assert not out.exists()


def test_an_export_through_the_fp32_model_is_refused_for_a_7b(seven_b, available_ram):
    available_ram(20.5)
    assert "fp32 model" in _refused(admit, "onnx-int8", seven_b, what="export")
