"""The package's import graph: no cycles (counting imports inside functions too), and library
modules import each other at module level (only the CLI defers, to answer --help at once)."""
import ast
from pathlib import Path

import edgekit

PACKAGE = Path(edgekit.__file__).parent
DEFERRING = {"edgekit.cli"}  # parsing only: imports the library inside each command (see its docstring)


def _modules() -> dict[str, ast.Module]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = ast.parse(path.read_text(), str(path))
    return found


def _imported(node: ast.AST, modules: dict) -> set[str]:
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name in modules}
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        return {n for n in [node.module, *(f"{node.module}.{a.name}" for a in node.names)] if n in modules}
    return set()


def test_no_import_cycle_among_edgekit_modules():
    modules = _modules()
    graph = {m: set().union(*(_imported(n, modules) for n in ast.walk(tree))) - {m} for m, tree in modules.items()}
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
