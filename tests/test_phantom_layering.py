"""The phantom sits at the bottom of the stage stack: it imports no other stage, no module of it imports another
module's private names, and its modules form no import cycle. Every import counts, those inside functions too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.torchfree

PHANTOM = Path(__file__).resolve().parents[1] / "sonogate" / "phantom"
# What the phantom may import from sonogate besides itself (the bottom layer of the architecture).
ALLOWED = ("sonogate.errors", "sonogate.measurements", "sonogate.core", "sonogate.cli_types")


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, imported names) of every import statement in ``path``, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
    return found


def _phantom_graph() -> dict[str, set[str]]:
    """phantom module stem -> stems of the phantom modules it imports."""
    graph = {}
    for path in sorted(PHANTOM.glob("*.py")):
        targets = set()
        for module, names in _imports(path):
            if module == "sonogate.phantom":
                targets.update(names)
            elif module.startswith("sonogate.phantom."):
                targets.add(module.split(".")[2])
        graph[path.stem] = targets - {path.stem}
    return graph


def test_phantom_imports_no_other_stage():
    wrong = [(path.name, module) for path in sorted(PHANTOM.glob("*.py")) for module, _ in _imports(path)
             if module.startswith("sonogate") and not module.startswith("sonogate.phantom")
             and not module.startswith(ALLOWED)]
    assert wrong == []


def test_no_phantom_module_imports_another_modules_private_names():
    wrong = [(path.name, module, name) for path in sorted(PHANTOM.glob("*.py")) for module, names in _imports(path)
             if module.startswith("sonogate") for name in names if name.startswith("_")]
    assert wrong == []
    # ... nor reaches them through a module object (``hip_us._fill``): attribute access on an imported module.
    for path in sorted(PHANTOM.glob("*.py")):
        modules = {name for module, names in _imports(path) if module == "sonogate.phantom" for name in names}
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules
                    and node.attr.startswith("_")):
                raise AssertionError(f"{path.name} uses {node.value.id}.{node.attr}")


def test_phantom_modules_form_no_import_cycle():
    graph = _phantom_graph()
    assert graph["realistic"] >= {"raster", "hip_scene"} and "hip_us" not in graph["realistic"]
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
