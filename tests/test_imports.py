"""The package's import graph: rooms on floors, every edge going down, no cycles, imports at the top.

The floor table is the one in ``../shared/DESIGN.md`` (Layout): a module may import its own room and the
rooms on floors below it, never a room on its own floor or above. The forbidden pairs the design names
beyond that (a runtime never imports a sibling runtime; the registry never loads, exports or self-tests;
metrics see only the Runner) are checked by name. Imports inside functions count as edges too.
"""
import ast
from pathlib import Path

import edgekit

PACKAGE = Path(edgekit.__file__).parent
DEFERRING = {"edgekit.cli"}  # parsing only: imports the library inside each command (see its docstring)
FLOORS = {"core": 1, "models": 2, "variants": 2, "memory": 3, "measure": 3, "quantizers": 4, "artifacts": 4,
          "pruning": 5, "runtimes": 5, "workflows": 6, "serve": 6, "ui": 7, "cli": 8, "__main__": 9}
RUNTIMES = ("pytorch", "onnxruntime", "openvino", "llama_cpp")
# third-party libraries only one room may import: what a room may see, by what it imports
# (IPython also in core.progress: a notebook's progress bar rewrites its own stored output)
ROOM_ONLY = {"ipywidgets": ("ui",), "matplotlib": ("ui",), "IPython": ("ui", "core")}


def _modules(package: Path = PACKAGE) -> dict[str, ast.Module]:
    found = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = ast.parse(path.read_text(), str(path))
    return found


def _imported(node: ast.AST, modules: dict) -> set[str]:
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name in modules}
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        return {n for n in [node.module, *(f"{node.module}.{a.name}" for a in node.names)] if n in modules}
    return set()


def _graph(modules: dict) -> dict[str, set[str]]:
    return {m: set().union(*(_imported(n, modules) for n in ast.walk(tree))) - {m} for m, tree in modules.items()}


def _room(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def floor_violations(modules: dict) -> list[str]:
    """Every import edge that does not go down a floor, or crosses a forbidden pair; empty when the house holds."""
    bad = []
    for module, targets in _graph(modules).items():
        room = _room(module)
        for target in sorted(targets):
            to = _room(target)
            if module == "edgekit" or room == to and room != "runtimes":
                continue  # the public face may show anything; a room may use itself
            if not to:
                bad.append(f"{module} -> {target}: rooms never import the package's face")
            elif room == "runtimes" and to == "runtimes":
                mine, theirs = module.split(".")[2:3], target.split(".")[2:3]
                if mine and theirs and mine != theirs and mine[0] in RUNTIMES and theirs[0] in RUNTIMES:
                    bad.append(f"{module} -> {target}: a runtime never imports a sibling runtime")
            elif FLOORS[to] >= FLOORS[room]:
                bad.append(f"{module} -> {target}: {room} (floor {FLOORS[room]}) may not import {to} "
                           f"(floor {FLOORS[to]})")
    return bad


def test_every_import_goes_down_a_floor():
    assert floor_violations(_modules()) == []


def test_an_upward_import_is_caught(tmp_path):
    """The floor test can fail: a quantizer importing a runtime, a runtime its sibling, the registry a loader."""
    modules = _modules()
    for module, line in [("edgekit.quantizers.packed", "from edgekit.runtimes import build_runner"),
                         ("edgekit.runtimes.openvino", "from edgekit.runtimes.onnxruntime import runner"),
                         ("edgekit.variants.registry", "from edgekit.models.load import load_tokenizer"),
                         ("edgekit.measure.quality", "from edgekit.quantizers.packed import PackedLinear")]:
        injected = dict(modules)
        injected[module] = ast.Module(body=[*modules[module].body, *ast.parse(line).body], type_ignores=[])
        assert any(v.startswith(module + " ->") for v in floor_violations(injected)), line


def test_third_party_ui_libraries_stay_in_ui():
    found = []
    for module, tree in _modules().items():
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            for name in names:
                owner = ROOM_ONLY.get(name.split(".")[0])
                if owner and _room(module) not in owner:
                    found.append(f"{module} imports {name}")
    assert not found, found


def test_no_import_cycle_among_edgekit_modules():
    modules = _modules()
    graph = _graph(modules)
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for nxt in sorted(graph[module]):
            assert state.get(nxt) != 1, "import cycle: " + " -> ".join(path[path.index(nxt):] + [module, nxt]
                                                                        if nxt in path else [module, nxt])
            if nxt not in state:
                visit(nxt, path + [module])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


def test_library_modules_import_edgekit_at_module_level():
    modules = _modules()
    local = []
    for name, tree in modules.items():
        if name in DEFERRING:
            continue
        for func in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            for node in ast.walk(func):
                if _imported(node, modules):
                    local.append(f"{name}:{node.lineno}")
    assert not local, f"imports of edgekit modules inside functions: {local}"


def test_every_room_says_what_lives_there():
    rooms = [p for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()]
    assert len(list(PACKAGE.iterdir())) - len(list(PACKAGE.glob("__pycache__"))) <= 15
    for room in rooms:
        assert ast.get_docstring(ast.parse((room / "__init__.py").read_text())), room.name


def test_the_public_face_resolves():
    """Every name ``edgekit`` exports exists where the face says it lives."""
    missing = [name for name in edgekit.__all__ if not hasattr(edgekit, name)]
    assert not missing, missing


def test_importing_the_library_leaves_logging_alone():
    """No module configures the root logger when imported (one that did sent every httpx request to a notebook's
    stderr): onnxruntime's MatMulNBits quantizer does, so it is imported where it is used."""
    import subprocess
    import sys

    code = ("import importlib, logging, edgekit, edgekit.ui\n"
            "[importlib.import_module(m) for m in sorted(set(edgekit._HOME.values()))]\n"
            "print(len(logging.getLogger().handlers))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.stdout.strip().splitlines()[-1] == "0", done.stderr[-2000:]


def test_building_an_nbits_graph_leaves_logging_alone(default_model, tmp_path):
    """Building a MatMulNBits graph imports onnxruntime's quantizer, which configures the root logger; the build
    leaves the root logger as it found it."""
    import subprocess
    import sys

    code = ("import logging\nfrom edgekit.runtimes.onnx.build import build_nbits_decoder\n"
            f"build_nbits_decoder({str(default_model)!r}, {str(tmp_path / 'g')!r}, 4, 32, False, 0)\n"
            "print(len(logging.getLogger().handlers), logging.getLogger().level)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == f"0 {30}", done.stdout[-500:]  # no handler, WARNING as Python's
