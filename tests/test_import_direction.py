"""The import structure ARCHITECTURE.md promises, parsed with `ast` (function-level imports too:
a lazy import still makes two modules depend on each other):
- arrows point one way: kernels <- llmcore <- recipes;
- no import cycle anywhere in the three packages;
- a recipe uses llmcore's and kernels' public names only (no `_private` module or name)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("kernels", "llmcore", "recipes")
FORBIDDEN = {"kernels": {"llmcore", "recipes"}, "llmcore": {"recipes"}}


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _exists(name: str, root: Path) -> bool:
    path = root.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports(path: Path, root: Path = ROOT) -> list[tuple[str, str | None]]:
    """(module, imported name or None) for every import in the file, anywhere in it, with
    relative imports resolved and `from pkg import mod` read as the module `pkg.mod`."""
    name = module_name(path, root)
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(a.name, None) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package, one level up per extra dot
                package = name.split(".") if is_package else name.split(".")[:-1]
                package = package[:len(package) - (node.level - 1)]
                base = ".".join(package + ([base] if base else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                found.append((sub, None) if _exists(sub, root) else (base, a.name))
    return found


def import_graph(root: Path = ROOT, packages=PACKAGES) -> dict[str, set[str]]:
    """{module: the modules of `packages` it imports} over every file of those packages."""
    graph = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            name = module_name(path, root)
            graph[name] = {m for m, _ in imports(path, root)
                           if m.split(".")[0] in packages and m != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def private_imports(path: Path, root: Path = ROOT) -> list[str]:
    """Imports of a non-public llmcore or kernels name: a `_module` on the path or a `_name`."""
    bad = []
    for module, attr in imports(path, root):
        if module.split(".")[0] not in ("llmcore", "kernels"):
            continue
        parts = module.split(".") + ([attr] if attr else [])
        if any(p.startswith("_") for p in parts):
            bad.append(".".join(parts))
    return bad


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_import_against_the_arrow(package):
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        wrong = {m.split(".")[0] for m, _ in imports(path)} & FORBIDDEN[package]
        if wrong:
            bad.append(f"{path.relative_to(ROOT)} imports {sorted(wrong)}")
    assert not bad, "\n".join(bad)


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_recipes_use_public_names_only():
    bad = [f"{p.relative_to(ROOT)}: {name}" for p in sorted((ROOT / "recipes").rglob("*.py"))
           for name in private_imports(p)]
    assert not bad, "recipes import non-public names:\n" + "\n".join(bad)


def test_the_checks_see_what_they_must(tmp_path):
    pkg = tmp_path / "llmcore"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from llmcore.sub import b\n")  # lazy: still an edge
    (pkg / "sub" / "b.py").write_text("from .. import a\n")  # relative import back
    (pkg / "c.py").write_text("import llmcore.a\n")
    graph = import_graph(tmp_path, ("llmcore",))
    assert find_cycle(graph) == ["llmcore.a", "llmcore.sub.b", "llmcore.a"]
    (pkg / "sub" / "b.py").write_text("x = 1\n")
    assert find_cycle(import_graph(tmp_path, ("llmcore",))) is None
    rec = tmp_path / "recipes"
    rec.mkdir()
    (rec / "r.py").write_text("from llmcore.a import _hidden, f\nfrom llmcore import _x\nimport kernels._dispatch\n"
                              "from llmcore.sub import b\n")
    assert private_imports(rec / "r.py", tmp_path) == ["llmcore.a._hidden", "llmcore._x", "kernels._dispatch"]
    (rec / "s.py").write_text("import os\nfrom recipes.base import Recipe\n")
    assert {m for m, _ in imports(rec / "s.py", tmp_path)} == {"os", "recipes.base"}
