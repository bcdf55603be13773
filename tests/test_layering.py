"""Imports run one way: base -> data -> models -> viz -> inference -> training -> analysis -> cli.

Every import of every module in bayesnas/ is read with ``ast`` (function-level, lazy
imports included) and checked against the layer order of docs/design.md §2. Modules of
one layer may import each other, but never in a cycle.
"""
import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "bayesnas"

#: layer of each top-level module or subpackage; a module imports only its own layer or lower ones
LAYERS = {
    "errors": 0, "fileio": 0, "device": 0, "rng": 0,
    "data": 1,
    "models": 2,
    "config": 3, "viz": 3,
    "inference": 4,
    "training": 5,
    "analysis": 6,
    "cli": 7, "__main__": 7,
}
#: the package root re-exports lazily (a module-level __getattr__) and is not a layer
ROOT = "bayesnas"


def module_name(path):
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path):
    """Every bayesnas module ``path`` imports, at any depth of its code, as dotted names."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == ROOT)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != ROOT:
                continue
            for alias in node.names:  # "from . import x" imports the submodule x
                candidate = f"{target}.{alias.name}"
                found.add(candidate if _exists(candidate) else target)
    return found


def _exists(dotted):
    path = PACKAGE.parent.joinpath(*dotted.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def layer_of(dotted):
    parts = dotted.split(".")
    return None if len(parts) == 1 else LAYERS[parts[1]]


MODULES = sorted(PACKAGE.rglob("*.py"))
GRAPH = {module_name(p): imported_modules(p) for p in MODULES}


def test_every_module_has_a_layer():
    unknown = sorted({name.split(".")[1] for name in GRAPH if "." in name} - set(LAYERS))
    assert not unknown, f"give these a layer in LAYERS (and docs/design.md): {unknown}"


@pytest.mark.parametrize("module", [m for m in GRAPH if m != ROOT])
def test_no_upward_import(module):
    mine = layer_of(module)
    upward = sorted(t for t in GRAPH[module] if t != ROOT and layer_of(t) > mine)
    assert not upward, f"{module} (layer {mine}) imports from higher layers: {upward}"


def test_no_import_cycle():
    edges = {m: {t for t in targets if t in GRAPH and t != m} for m, targets in GRAPH.items() if m != ROOT}
    state, stack, cycles = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_only_inference_knows_pyro():
    for path in MODULES:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        if any(n.split(".")[0] == "pyro" for n in names):
            assert module_name(path).startswith("bayesnas.inference"), f"{path.name} imports pyro"
