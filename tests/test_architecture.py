"""The layout docs/architecture.md promises: imports run one way (advisor -> crawler -> merge, data below all),
no module imports itself back through others, and only the registry layer talks to databases."""

import ast
from pathlib import Path

from tests.conftest import ROOT

PACKAGES = ("advisor", "crawler", "merge", "data")
DATABASE_LIBRARIES = ("sqlalchemy", "sqlmodel", "sqlite3", "psycopg", "procrastinate")  # the queue too
# who may import whom (a package always may import itself)
ALLOWED = {"advisor": {"crawler", "merge", "data"}, "crawler": {"merge", "data"}, "merge": set(), "data": set()}


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")  # fmt: skip


def _imports(path: Path, *, runtime_only: bool) -> list[str]:
    """Every module named by an import anywhere in the file (function bodies too); ``runtime_only`` leaves out
    ``if TYPE_CHECKING:`` blocks."""
    tree = ast.parse(path.read_text())
    skipped = set()
    if runtime_only:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and _is_type_checking(node):
                skipped |= {id(n) for child in node.body for n in ast.walk(child)}
    names = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return names


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: {i for i in _imports(path, runtime_only=False) if i in modules and i != name}
            for name, path in modules.items()}  # fmt: skip


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    cycles, done = [], set()

    def visit(node, stack, on_stack):
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt in on_stack:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in done:
                visit(nxt, stack, on_stack)
        on_stack.discard(stack.pop())
        done.add(node)

    for module in sorted(graph):
        if module not in done:
            visit(module, [], set())
    return cycles


def test_the_cycle_finder_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c", "a"]]


def test_no_module_imports_itself_back():
    # a package's __init__ that hands out its own submodules lazily is not a circle of two modules
    real = [c for c in _cycles(_graph()) if not any(c[i + 1].startswith(c[i] + ".") for i in range(len(c) - 1))]
    assert real == [], "import cycles: " + "; ".join(" -> ".join(c) for c in real)


def test_imports_run_one_way():
    wrong = [f"{module} imports {target}" for module, targets in _graph().items() for target in targets
             if target.split(".")[0] != module.split(".")[0]
             and target.split(".")[0] not in ALLOWED[module.split(".")[0]]]  # fmt: skip
    assert wrong == []


def test_only_the_registry_layer_talks_to_databases():
    offenders = [
        f"{module} imports {name}"
        for module, path in _modules().items()
        if not module.startswith("crawler.registry")
        for name in _imports(path, runtime_only=True)
        if name.split(".")[0] in DATABASE_LIBRARIES
    ]
    assert offenders == []
