"""The import rules of docs/ARCHITECTURE.md ("What may import what"), read from the source.

Every module's imports are parsed (module level and inside functions alike), resolved to
the ``vmm`` package they name, and checked: only ``vmm.cpu`` imports Unicorn, ``vmm.x86``
imports no other ``vmm`` package, and the packages of ``vmm`` form no cycle.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "vmm"


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out.append((".".join(parts), path))
    return out


def _imports(module: str, path: Path) -> set[str]:
    """Absolute names of everything ``module`` imports, relative imports resolved."""
    is_package = path.name == "__init__.py"
    base = module.split(".") if is_package else module.split(".")[:-1]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[:len(base) - node.level + 1]
                target = ".".join(anchor + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names.add(target)
            names |= {f"{target}.{alias.name}" for alias in node.names}  # `from . import x`
    return names


def _package(name: str) -> str | None:
    """The top-level ``vmm`` package or module a name lies in (``vmm.cpu``, ``vmm.vm``)."""
    parts = name.split(".")
    if parts[0] != "vmm" or len(parts) < 2:  # a name below vmm itself
        return None
    return ".".join(parts[:2])


MODULES = _modules()
IMPORTS = {module: _imports(module, path) for module, path in MODULES}
KNOWN = {_package(m) for m, _ in MODULES} - {None}


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, names in IMPORTS.items():
        here = _package(module)
        if here is None:
            continue
        targets = {_package(n) for n in names} & KNOWN
        graph.setdefault(here, set()).update(t for t in targets if t and t != here)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph, or None (depth-first search, colouring nodes)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_every_module_is_read():
    assert len(MODULES) > 50
    assert "vmm.cpu.engine" in IMPORTS and "vmm.stats.events" in IMPORTS


def test_only_vmm_cpu_imports_unicorn():
    offenders = sorted(m for m, names in IMPORTS.items()
                       if any(n == "unicorn" or n.startswith("unicorn.") for n in names)
                       and _package(m) != "vmm.cpu")
    assert offenders == []


def test_the_vocabulary_imports_no_other_vmm_package():
    offenders = {m: sorted(n for n in names if (_package(n) or "vmm.x86") != "vmm.x86")
                 for m, names in IMPORTS.items() if _package(m) == "vmm.x86"}
    assert {m: n for m, n in offenders.items() if n} == {}


def test_the_packages_form_no_import_cycle():
    assert _cycle(_graph()) is None


@pytest.mark.parametrize("graph, expected", [
    ({"a": {"b"}, "b": {"a"}}, ["a", "b", "a"]),
    ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
])
def test_the_cycle_finder_finds_cycles(graph, expected):
    assert _cycle(graph) == expected


def test_statistics_sit_below_the_modes_and_the_cost_model():
    graph = _graph()
    assert "vmm.stats" in graph["vmm.modes"]
    assert graph["vmm.stats"] <= {"vmm.vmx", "vmm.x86"}
    assert "vmm.cost" not in graph["vmm.modes"]
