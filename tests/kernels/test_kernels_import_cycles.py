"""No import cycle inside ``kernels/``: every import of every module, the function-level ones
too (a lazy import still makes two modules depend on each other), parsed with ``ast``."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "kernels"


def _module_name(path):
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _exists(name):
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _imports(path, name):
    """The kernels modules that module ``name`` (file ``path``) imports, anywhere in it."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package, one level up per extra dot
                package = name.split(".") if is_package else name.split(".")[:-1]
                package = package[:len(package) - (node.level - 1)]
                base = ".".join(package + ([base] if base else []))
            # ``from kernels import x`` imports the module kernels.x when there is one
            targets = [f"{base}.{a.name}" if _exists(f"{base}.{a.name}") else base
                       for a in node.names]
        else:
            continue
        found.update(t for t in targets if t == PACKAGE or t.startswith(PACKAGE + "."))
    found.discard(name)
    return found


def import_graph(root=ROOT):
    """{module: the kernels modules it imports} over every file under kernels/."""
    return {_module_name(p): _imports(p, _module_name(p))
            for p in sorted((root / PACKAGE).rglob("*.py"))}


def find_cycle(graph):
    """One import cycle as a list of modules (first == last), or None."""
    state, stack = {}, []

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


def test_the_graph_sees_lazy_and_package_imports():
    graph = import_graph()
    # a function-level import (the Triton half, imported on first use) is an edge
    assert "kernels.linear_cross_entropy_triton" in graph["kernels.linear_cross_entropy"]
    # ``from kernels import _dispatch`` is the module kernels._dispatch
    assert "kernels._dispatch" in graph["kernels.linear_cross_entropy"]
    assert "kernels.attention" in graph["kernels"]


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycle_inside_kernels():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle inside kernels/: " + " -> ".join(cycle)
