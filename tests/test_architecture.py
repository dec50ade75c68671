"""The layers of the house: miniworld -> evovlm -> evollm, nothing pointing back, no import cycles
(every import counts, also those inside functions), and the core loads no front end."""

import ast
import subprocess
import sys

import pytest

from helpers import ROOT

LAYERS = ("evollm", "evovlm", "miniworld")      # each may import only itself and the ones before it


def modules() -> dict:
    """dotted name -> path, for every module of the three packages."""
    out = {}
    for pkg in LAYERS:
        for f in (ROOT / pkg).rglob("*.py"):
            parts = f.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def imports(name: str, path, known) -> set:
    """The known modules `name` imports (a `from x import y` names x.y where that is a module)."""
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")[: len(name.split(".")) - node.level + is_pkg]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module
            targets = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in known else prefix for a in node.names]
        else:
            continue
        for t in targets:
            while t not in known and "." in t:
                t = t.rsplit(".", 1)[0]
            if t in known and t != name:
                out.add(t)
    return out


def graph() -> dict:
    known = modules()
    return {m: imports(m, p, known) for m, p in known.items()}


def cycles(g: dict) -> list:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, found, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))
    for v in g:
        if v not in index:
            visit(v)
    return found


def test_the_checker_sees_lazy_imports_and_cycles():
    g = graph()
    assert "evollm.engine.disk" in g["evollm.search.workbench"]          # inside a function
    assert "evollm" in g["evovlm.cli"] and "evovlm.infer" in g["miniworld.vlm"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_imports_point_down_the_layers_and_never_loop():
    g = graph()
    layer = lambda m: LAYERS.index(m.split(".")[0])
    upward = sorted(f"{m} -> {d}" for m, ds in g.items() for d in ds if layer(d) > layer(m))
    assert upward == []
    assert cycles(g) == []


def test_importing_the_core_loads_no_front_end():
    code = ("import importlib, pkgutil, sys, evollm\n"
            "for m in pkgutil.walk_packages(evollm.__path__, 'evollm.'):\n"
            "    importlib.import_module(m.name)\n"
            "print(sorted(k for k in sys.modules if k.split('.')[0] in ('evovlm', 'miniworld')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


def test_every_declared_entry_point_loads():
    """The front ends' tasks, protocols and benchmark tasks (pyproject entry points) resolve."""
    tomllib = pytest.importorskip("tomllib")          # Python 3.11+
    from importlib import import_module
    eps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]
    assert {"evollm.tasks", "evollm.protocols", "evovlm.bench"} <= set(eps)
    for group in eps.values():
        for target in group.values():
            module, attr = target.split(":")
            assert getattr(import_module(module), attr) is not None
