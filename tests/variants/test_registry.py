"""The registry entry is the variant: one entry is priced by the planner, listed by the CLI, offered by
the widgets and built like any other."""
import pytest
import torch

from edgekit.cli import main
from edgekit.core.errors import VariantError
from edgekit.memory.bytes import weight_bytes
from edgekit.memory.guard import torch_runner
from edgekit.memory.plan import plan_memory
from edgekit.quantizers.packed import packed_bytes, quantize_rtn
from edgekit.runtimes import build_runner
from edgekit.ui.widgets import Dashboard, MemoryPlanner, variant_picker
from edgekit.variants.registry import Variant, register, unregister

PATTERN = r"throwaway-int(?P<bits>[48])-g(?P<group_size>\d+)"


@pytest.fixture
def throwaway():
    """A new variant family added the way a contributor would: one entry, in one place."""
    @register(PATTERN, "pytorch", "a throwaway RTN variant for the registry test", ("throwaway-int8-g64",),
              linear_bytes=packed_bytes, options=("note",))
    def build(variant, source, tokenizer):
        runner = torch_runner(variant, source, tokenizer, dtype=torch.float32)
        quantize_rtn(runner.model, variant.bits, variant.group_size)
        return runner
    yield "throwaway-int8-g64"
    unregister(PATTERN)


def test_one_entry_is_priced_listed_offered_and_built(throwaway, default_model, capsys):
    planned = weight_bytes(default_model, throwaway)
    assert planned == weight_bytes(default_model, "int8-g64")  # the same layout, priced by its own entry
    assert planned < weight_bytes(default_model, "fp32")
    assert plan_memory(default_model, throwaway, context=256, device="laptop-8gb").fits

    assert main(["variants"]) == 0
    assert "throwaway-int8-g64" in capsys.readouterr().out

    assert throwaway in Dashboard().variants.options
    assert throwaway in variant_picker().options
    assert throwaway in MemoryPlanner(model="default").variant.options

    runner = build_runner(throwaway + ":note=hello", default_model)
    try:
        assert abs(runner.weight_bytes() - planned) / planned < 0.02
    finally:
        runner.close()


def test_options_are_checked_by_the_entry(throwaway):
    assert Variant.parse(throwaway + ":context=512").option("context") == 512  # the guard's options
    with pytest.raises(VariantError, match="unknown option.*colour.*it takes note"):
        Variant.parse(throwaway + ":colour=red")


def test_unregistered_names_are_unknown(throwaway):
    unregister(PATTERN)
    with pytest.raises(VariantError, match="unknown variant 'throwaway-int8-g64'"):
        Variant.parse(throwaway)


@pytest.fixture
def method_room(tmp_path, monkeypatch):
    """``add(module, source, first=False)``: a throwaway method room holding ``module`` (its ``source``), placed
    after the rooms (or before them, ``first``), with the registry set to walk the rooms afresh; taken back after."""
    import sys

    from edgekit.variants import registry

    room = tmp_path / "throwaway_room"
    room.mkdir()
    (room / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_modules_loaded", False)
    monkeypatch.setattr(registry, "_UNLOADED", {})

    def add(module: str, source: str, first: bool = False) -> None:
        (room / f"{module}.py").write_text(source)
        rooms = ("throwaway_room", *registry.METHOD_ROOMS) if first else (*registry.METHOD_ROOMS, "throwaway_room")
        monkeypatch.setattr(registry, "METHOD_ROOMS", rooms)
        registry.method_modules.cache_clear()

    yield add
    registry.method_modules.cache_clear()
    for name in [m for m in sys.modules if m == "throwaway_room" or m.startswith("throwaway_room.")]:
        sys.modules.pop(name)


def test_a_new_method_is_one_file_in_its_room(method_room):
    """Discovery, not a list: a module dropped into a method room registers its variant on first lookup."""
    from edgekit.variants import registry

    method_room("tern",
                "from edgekit.variants.registry import dense_linear_bytes, register\n"
                "@register(r'tern-test', 'pytorch', 'a throwaway method', linear_bytes=dense_linear_bytes('fp32'),\n"
                "          defaults={'levels': 3})\n"
                "def build(variant, source, tokenizer):\n"
                "    raise NotImplementedError\n")
    try:
        variant = Variant.parse("tern-test")
        assert variant.entry.summary == "a throwaway method"
        assert variant.option("levels") == 3  # the entry's default, read back through the variant
        assert "throwaway_room.tern" in registry.method_modules()
    finally:
        unregister("tern-test")


def test_a_method_whose_library_is_missing_is_left_out_and_named(method_room):
    """A method module that imports a library this machine lacks does not take the registry down: every
    other variant still parses, and asking for one of its variants names the library to install."""
    method_room("needs_lib",
                "import edgekit_no_such_library\n"
                "from edgekit.variants.registry import dense_linear_bytes, register\n"
                "@register(r'needs-lib', 'pytorch', 'a method on a missing library',\n"
                "          linear_bytes=dense_linear_bytes('fp32'))\n"
                "def build(variant, source, tokenizer):\n"
                "    raise NotImplementedError\n", first=True)
    assert Variant.parse("int4-g128").entry.family == "pytorch"  # the rooms after it still load
    with pytest.raises(VariantError, match="throwaway_room.needs_lib's variants need edgekit_no_such_library"):
        Variant.parse("needs-lib")
