"""The package's layers: imports flow one way only, and no module imports itself in a circle.

The layers, lowest first (README, "For contributors"); a module may import its own subpackage and
any layer below its own, never one above:

    utils (and _compat)  <  data, spaces  <  config  <  nas  <  hpo  <  stages  <  cli, trial, tuners

Every import statement counts, also the ones inside functions.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "nni_visplugin"
SPACES = ROOT / "spaces"  # installed as nni_visplugin.spaces

RANK = {"utils": 0, "_compat": 0, "data": 1, "spaces": 1, "config": 2, "nas": 3, "hpo": 4, "stages": 5,
        "cli": 6, "trial": 6, "tuners": 6, "__init__": 6}


def _modules() -> dict[str, Path]:
    found = {}
    for base, prefix in ((PACKAGE, "nni_visplugin"), (SPACES, "nni_visplugin.spaces")):
        for path in base.rglob("*.py"):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([prefix, *parts])] = path
    return found


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``name`` imports (``from x import y`` counts ``x.y`` when it is a module)."""
    out = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and target != "nni_visplugin":
                out.add(target)
    return out


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


MODULES = _modules()
GRAPH = {name: _imports(name, path, set(MODULES)) for name, path in MODULES.items()}


def test_every_module_belongs_to_a_layer():
    assert {_layer(m) for m in MODULES} <= set(RANK)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_run_downwards_only(module):
    upward = sorted(t for t in GRAPH[module]
                    if _layer(t) != _layer(module) and RANK[_layer(t)] >= RANK[_layer(module)])
    assert not upward, f"{module} ({_layer(module)}) imports {upward} from a layer that is not below it"


def test_no_import_cycles():
    # Tarjan's strongly connected components: any component of more than one module is a cycle.
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_the_checker_sees_a_cycle_and_an_upward_import(tmp_path, monkeypatch):
    """The two rules above are not vacuous: a planted cycle and a planted upward import are found."""
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("from nni_visplugin.nas import b\n")
    b.write_text("def f():\n    from nni_visplugin.nas.a import x\n")
    known = {"nni_visplugin.nas.a", "nni_visplugin.nas.b"}
    assert _imports("nni_visplugin.nas.a", a, known) == {"nni_visplugin.nas.b"}
    assert _imports("nni_visplugin.nas.b", b, known) == {"nni_visplugin.nas.a"}
    up = tmp_path / "c.py"
    up.write_text("import nni_visplugin.stages.search\n")
    assert _imports("nni_visplugin.nas.c", up, {"nni_visplugin.stages.search"}) == {"nni_visplugin.stages.search"}
