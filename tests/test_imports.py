"""The package's shape: no import cycles, and each package imports only the layers below it.

Every import counts, including those under `if TYPE_CHECKING:` and inside functions: a cycle
hidden there is still a knot a reader has to untie.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sollol_proxy"

# What each subpackage may import from sollol_proxy, besides itself (its __init__ says why).
# Top-level modules (app, handlers, server, cli, demo) and bench/ sit above all of them.
ALLOWED: dict[str, set[str]] = {
    "wire": set(),
    "routing": set(),
    "config": {"wire", "routing"},
    "lifecycle": {"config", "wire"},
    "fleet": {"config", "wire", "routing"},
    "admission": {"config", "wire", "routing", "lifecycle", "fleet"},
    "forward": {"config", "wire", "routing", "lifecycle", "fleet", "admission"},
    "guard": {"config", "wire", "lifecycle"},
    "embed": {"config", "wire", "routing", "lifecycle", "fleet", "admission", "forward"},
    "observe": {"config", "wire", "routing", "lifecycle", "fleet", "admission", "forward", "embed"},
    "simulator": {"wire"},
    "dataplane": {"config", "wire", "routing", "lifecycle", "guard"},
    "shared": {"config", "wire", "routing", "lifecycle", "fleet", "admission"},
}


def module_names(root: Path) -> dict[str, Path]:
    names = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def imported(module: str, path: Path, known: dict[str, Path]) -> Iterator[str]:
    """The modules of the package that `module` imports (a `from pkg import name` counts as
    importing `pkg.name` when that is a module, and `pkg` itself)."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            source = ".".join(base + ([node.module] if node.module else []))
            targets = [source, *(f"{source}.{alias.name}" for alias in node.names)]
        else:
            continue
        for target in targets:
            if target in known and target != module:
                yield target


def import_graph(root: Path) -> dict[str, set[str]]:
    known = module_names(root)
    return {module: set(imported(module, path, known)) for module, path in known.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    wrong = []
    for module, targets in graph.items():
        parts = module.split(".")
        if len(parts) < 3 or parts[1] not in ALLOWED:
            continue  # a top-level module, or bench/: they may import anything
        for target in targets:
            if target.count(".") == 0:
                continue  # the root package holds only __version__
            package = target.split(".")[1]
            if package != parts[1] and package not in ALLOWED[parts[1]]:
                wrong.append(f"{module} imports {target}")
    return sorted(wrong)


def test_no_import_cycles() -> None:
    assert cycles(import_graph(PACKAGE)) == []


def test_packages_import_only_the_layers_below() -> None:
    assert layer_violations(import_graph(PACKAGE)) == []


def test_every_subpackage_has_a_layer_and_says_what_it_owns() -> None:
    for init in PACKAGE.glob("*/__init__.py"):
        name = init.parent.name
        assert name in ALLOWED or name == "bench", f"{name}: add it to ALLOWED"
        assert ast.get_docstring(ast.parse(init.read_text())), f"{name}/__init__.py: no docstring"


def test_a_cycle_is_found(tmp_path: Path) -> None:
    """The checker itself: a deliberate knot, through a function-level import and a
    `from package import module`, is reported."""
    root = tmp_path / "sollol_proxy"
    (root / "fleet").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "fleet" / "__init__.py").write_text('"""x"""')
    (root / "fleet" / "a.py").write_text("from sollol_proxy.fleet import b\n")
    (root / "fleet" / "b.py").write_text("def f():\n    from .c import g\n")
    (root / "fleet" / "c.py").write_text("from sollol_proxy.fleet.a import x\n")
    (root / "fleet" / "d.py").write_text("from sollol_proxy.fleet.a import x\n")
    assert cycles(import_graph(root)) == [
        ["sollol_proxy.fleet.a", "sollol_proxy.fleet.b", "sollol_proxy.fleet.c"]
    ]


@pytest.mark.parametrize(
    ("importer", "imported_module", "allowed"),
    [("fleet", "observe", False), ("observe", "fleet", True), ("wire", "config", False)],
)
def test_a_layer_violation_is_found(
    tmp_path: Path, importer: str, imported_module: str, allowed: bool
) -> None:
    root = tmp_path / "sollol_proxy"
    for package in {importer, imported_module}:
        (root / package).mkdir(parents=True, exist_ok=True)
        (root / package / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / imported_module / "low.py").write_text("")
    (root / importer / "high.py").write_text(f"from sollol_proxy.{imported_module} import low\n")
    found = layer_violations(import_graph(root))
    assert (found == []) is allowed
