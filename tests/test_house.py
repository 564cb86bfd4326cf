"""The house rules, read off the source: data flows one way, no module imports upwards, and there
is no import circle -- counting function-local imports, which a circle can hide behind.

The graph is built from every ``import``/``from ... import`` statement in ``mmit_fast/`` (at any
depth of the file, so a lazy import inside a function counts), resolved to the package's own
modules."""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "mmit_fast"

#: layers, bottom first: a module may import its own layer and the ones below, never above
LAYERS = [
    {"_version", "_io", "_extras", "_exits", "storage"},
    {"shards"},
    {"pack"},
    {"data"},
    {"models"},
    {"losses"},
    {"metrics", "inference", "distributed", "config"},   # config: a run's settings (names loss schemes)
    {"recipes"},
    {"interpret", "evaluate", "export", "report", "report_plots"},
    {"train"},
    {"demo"},
    {"cli", "__main__", "pack.command", "models.command", "interpret.command", "eval_command", "demo_command",
     "report_command", "export_command"},
]


def _modules():
    out = {}
    for p in PKG.rglob("*.py"):
        parts = list(p.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


MODULES = _modules()


def _targets(mod: str, node, is_pkg: bool):
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    if node.level:
        base = base[: len(base) - (node.level - 1)]
        name = ".".join(base + ([node.module] if node.module else []))
    else:
        name = node.module or ""
    return [f"{name}.{a.name}" if f"{name}.{a.name}" in MODULES else name for a in node.names]


def import_graph():
    graph = {}
    for mod, path in MODULES.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for t in _targets(mod, node, path.name == "__init__.py"):
                    while t not in MODULES and "." in t:
                        t = t.rsplit(".", 1)[0]
                    if t.startswith("mmit_fast") and t in MODULES and t != mod and t != "mmit_fast":
                        deps.add(t)
        graph[mod] = deps
    return graph


def _layer(mod: str) -> int:
    rest = mod.split(".")[1:]
    for key in (".".join(rest[:2]), rest[0] if rest else ""):
        for i, layer in enumerate(LAYERS):
            if key in layer:
                return i
    raise AssertionError(f"{mod} is in no layer of tests/test_house.py: place it")


def _cycles(graph):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_circle():
    assert _cycles(import_graph()) == []


def test_nothing_imports_upwards():
    bad = [f"{m} -> {d}" for m, deps in import_graph().items() for d in deps
           if m != "mmit_fast" and _layer(d) > _layer(m)]
    assert not bad, "imports against the flow of data:\n" + "\n".join(sorted(bad))


def test_only_the_entry_points_import_the_cli_and_train():
    graph = import_graph()
    for m, deps in graph.items():
        if "mmit_fast.cli" in deps:
            assert m == "mmit_fast.__main__", f"{m} imports the CLI"
        if any(d.startswith("mmit_fast.train") for d in deps) and not m.startswith("mmit_fast.train"):
            assert m in ("mmit_fast.demo", "mmit_fast.cli"), f"{m} imports train/"


def test_the_checker_sees_lazy_imports(tmp_path):
    """The graph counts an import inside a function (how circles hid before)."""
    graph = import_graph()
    assert "mmit_fast.recipes" in graph["mmit_fast.evaluate"]          # a function-local import there
    assert any(c == ["a", "b"] for c in _cycles({"a": {"b"}, "b": {"a"}, "c": set()}))
