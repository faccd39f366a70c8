"""The package's layering: imports point down, nothing imports ``advtrain.cli``, no cycles.

The layers, bottom to top (DESIGN.md, "Layout"): a package may import its own modules and
any package of a lower layer, never one of its own layer or above. The test reads every
module's import statements (``ast``), so it needs no import side effects and cannot be
fooled by lazy imports inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "advtrain"

LAYERS: tuple[frozenset[str], ...] = tuple(
    frozenset(layer)
    for layer in (
        {"core"},
        {"threat"},
        {"data", "models"},
        {"attacks"},
        {"verification"},
        {"objectives", "regularizers"},
        {"distillation", "smoothing"},
        {"registry", "certification"},
        {"training"},
        {"evaluation"},
        {"cli"},
    )
)
LEVEL = {package: i for i, layer in enumerate(LAYERS) for package in layer}


def _package(module: str) -> str:
    """``advtrain.attacks.pgd`` -> ``attacks``."""
    return module.split(".")[1]


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every ``advtrain.*`` module named by an import in ``path`` (relative ones resolved)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            found |= {target, *(f"{target}.{alias.name}" for alias in node.names)}
    return {m for m in found if m.startswith("advtrain.")}


def _graph() -> dict[str, set[str]]:
    """Package -> the other packages its modules import."""
    graph: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        if path.parent == ROOT and path.name == "__init__.py":
            continue
        own = _package(_module_name(path))
        graph.setdefault(own, set()).update(p for p in map(_package, _imports(path)) if p != own)
    return graph


def test_every_package_has_a_layer() -> None:
    assert set(_graph()) <= set(LEVEL), sorted(set(_graph()) - set(LEVEL))


@pytest.mark.parametrize("package", sorted(LEVEL))
def test_imports_point_down(package: str) -> None:
    upward = sorted(p for p in _graph().get(package, set()) if LEVEL.get(p, -1) >= LEVEL[package])
    assert not upward, f"advtrain.{package} imports from its own layer or above: {upward}"


def test_core_imports_nothing_above_it() -> None:
    assert _graph().get("core", set()) == set()


def test_nothing_imports_cli() -> None:
    importers = sorted(p for p, deps in _graph().items() if "cli" in deps)
    assert not importers, f"advtrain.cli is imported by {importers}"


def test_no_cycles() -> None:
    graph = _graph()

    def reachable(start: str) -> set[str]:
        seen: set[str] = set()
        stack = [start]
        while stack:
            for nxt in graph.get(stack.pop(), set()):
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
        return seen

    assert not [p for p in graph if p in reachable(p)]
