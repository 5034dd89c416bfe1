"""The package's layering, checked on the installed package: nothing outside `pyns.cli` imports the command
line, and no two modules import each other, directly or around a loop (function-level imports count)."""
import ast
from pathlib import Path

import pyns

ROOT = Path(pyns.__file__).parent


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _edges(mods: dict[str, Path]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in mods:
                    target = target.rpartition(".")[0]
                # a package's own __init__ is not an edge of its submodules (Python imports it first anyway)
                if target and target != name and not name.startswith(target + "."):
                    edges[name].add(target)
    return edges


def test_only_the_cli_imports_the_cli():
    edges = _edges(_modules())
    offenders = sorted(f"{m} -> {t}" for m, ts in edges.items() if not m.startswith(("pyns.cli", "pyns.__main__"))
                       for t in ts if t.startswith("pyns.cli"))
    assert offenders == []


def test_no_import_cycles():
    edges = _edges(_modules())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in edges:
        if module not in index:
            visit(module)
    assert cycles == []


def test_the_checker_sees_a_cycle(tmp_path, monkeypatch):
    # The checker itself must find a planted cycle, or the two tests above prove nothing.
    pkg = tmp_path / "pyns"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from pyns import b\n")
    (pkg / "b.py").write_text("from pyns.a import f\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", pkg)
    edges = _edges(_modules())
    assert "pyns.b" in edges["pyns.a"] and "pyns.a" in edges["pyns.b"]
