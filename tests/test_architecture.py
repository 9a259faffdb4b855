"""The layout docs/architecture.md promises: imports run one way (advisor -> crawler -> merge, data below all;
within advisor, cli -> team -> get -> build -> local and advice -> safety), no module imports itself back through
others, and only the registry layer talks to databases."""

import ast
import functools
from pathlib import Path

from tests.conftest import ROOT

PACKAGES = ("advisor", "crawler", "merge", "data")
DATABASE_LIBRARIES = ("sqlalchemy", "sqlmodel", "sqlite3", "psycopg", "procrastinate")  # the queue too
# who may import whom (a package always may import itself)
ALLOWED = {"advisor": {"crawler", "merge", "data"}, "crawler": {"merge", "data"}, "merge": {"data"}, "data": set()}
# advisor's use cases, top to bottom: a module may import its own layer and those below it, never one above.
# local and advice share a layer: a lookup probes a local file, and a scan asks lookup about each one.
ADVISOR_LAYERS = (("advisor.cli",), ("advisor.team",), ("advisor.get",), ("advisor.build",),
                  ("advisor.local", "advisor.advice"), ("advisor.safety",))  # fmt: skip
ADVISOR_TOP = {"advisor", "advisor.__main__"}  # the package itself and `python -m advisor`: above every layer


@functools.cache
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
    modules = _modules()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            named = [f"{node.module}.{a.name}" for a in node.names]
            # "from package import module" imports that module; a name of the package's own is the package's
            names += named if all(n in modules for n in named) else [node.module, *named]
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
    cycles = _cycles(_graph())
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_importing_a_module_from_its_package_is_an_import_of_that_module(tmp_path):
    (tmp_path / "m.py").write_text("from crawler.registry import runs\nfrom crawler.registry import connect, runs\n")
    assert _imports(tmp_path / "m.py", runtime_only=False) == [
        "crawler.registry.runs", "crawler.registry", "crawler.registry.connect", "crawler.registry.runs"]


def test_imports_run_one_way():
    wrong = [f"{module} imports {target}" for module, targets in _graph().items() for target in targets
             if target.split(".")[0] != module.split(".")[0]
             and target.split(".")[0] not in ALLOWED[module.split(".")[0]]]  # fmt: skip
    assert wrong == []


def _layer(module: str) -> int | None:
    for depth, packages in enumerate(ADVISOR_LAYERS):
        if any(module == p or module.startswith(p + ".") for p in packages):
            return depth
    return None


def test_every_advisor_module_has_a_layer():
    assert [m for m in _modules() if m.startswith("advisor") and m not in ADVISOR_TOP and _layer(m) is None] == []


def _upward(graph: dict[str, set[str]]) -> list[str]:
    """Every import of a layer above the importer's (the top package counts as above every layer)."""
    return [f"{module} imports {target}" for module, targets in graph.items() for target in targets
            if target.startswith("advisor") and (layer := _layer(module)) is not None
            and ((above := _layer(target)) is None or above < layer)]  # fmt: skip


def test_the_layer_check_sees_an_upward_import():
    graph = {"advisor.build.builder": {"advisor.cli.render", "advisor.advice"}, "advisor.local.scan":
             {"advisor.advice.lookup", "advisor"}, "advisor.__main__": {"advisor.cli.fastpath"}}  # fmt: skip
    assert sorted(_upward(graph)) == ["advisor.build.builder imports advisor.cli.render",
                                      "advisor.local.scan imports advisor"]  # fmt: skip


def test_advisor_packages_import_downward():
    assert _upward(_graph()) == []


def test_only_the_registry_layer_talks_to_databases():
    offenders = [
        f"{module} imports {name}"
        for module, path in _modules().items()
        if not module.startswith("crawler.registry")
        for name in _imports(path, runtime_only=True)
        if name.split(".")[0] in DATABASE_LIBRARIES
    ]
    assert offenders == []


# The registry's records (crawler.registry.records) are plain data with no query behind them: the one module of
# the registry that code outside it may name; everything else it reaches through the package.
RECORDS = "crawler.registry.records"


def test_outside_the_registry_code_goes_through_its_package():
    reaching_in = [f"{module} imports {target}" for module, targets in _graph().items()
                   if not module.startswith("crawler.registry") for target in targets
                   if target.startswith("crawler.registry.") and not target.startswith(RECORDS)]  # fmt: skip
    assert reaching_in == []


# the ladder ranks what lookup gathered (advisor.advice.facts): it may read the registry's records, never the
# registry itself, the network, the clock or the files
LADDER_MAY_NOT = ("crawler.registry", "crawler.http", "httpx", "huggingface_hub", "time", "datetime", "os",
                  "pathlib", "advisor.advice.lookup", "advisor.advice.facts.gather")  # fmt: skip


def test_the_ladder_is_a_function_of_plain_data():
    path = _modules()["advisor.advice.ladder"]
    names = [n for n in _imports(path, runtime_only=False) if not n.startswith(RECORDS)]
    assert [n for n in names if any(n == bad or n.startswith(bad + ".") for bad in LADDER_MAY_NOT)] == []


def test_the_ladder_weighs_releases_without_a_registry():
    from advisor.advice import ladder
    from tests.ladder_facts import releases

    subject = ladder.Subject("Mix", "sd1", model_id="civitai:1", version_id="civitai:v2")
    rec, _, _ = ladder.recommend(subject, releases("Mix", {"v2": 0.9}))
    assert rec.kind == "own-release" and rec.target.version_id == "civitai:v2-inp"


def test_only_the_settings_module_touches_the_environment():
    """data/settings.py reads every variable (and sets the few a run sets); everyone else asks it."""
    touching = []
    for module, path in _modules().items():
        if module == "data.settings":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "putenv", "unsetenv")
                    and isinstance(node.value, ast.Name) and node.value.id == "os"):  # fmt: skip
                touching.append(f"{module}:{node.lineno}")
    assert touching == []


def test_the_registry_imports_nothing_above_it():
    """The registry (crawler.registry) owns the schema and every query: it may use data/ and merge/, never the
    crawlers or the advisor that call it."""
    above = [f"{module} imports {target}" for module, targets in _graph().items()
             if module.startswith("crawler.registry")
             for target in targets if not target.startswith(("crawler.registry", "data", "merge"))]  # fmt: skip
    assert above == []


def test_the_registry_package_says_each_way_in_alike_to_python_and_to_type_checkers():
    """crawler/registry/__init__.py names its lazy ways in three times (for Python, for type checkers, for
    `import *`): the three agree, and each resolves to its module's object."""
    import importlib

    import crawler.registry as package

    path = _modules()["crawler.registry"]
    typed = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.If) and _is_type_checking(node):
            typed |= {a.asname or a.name for child in node.body if isinstance(child, ast.ImportFrom)
                      for a in child.names}  # fmt: skip
    assert typed == set(package._HOME) and set(package._HOME) <= set(package.__all__)
    for name, home in package._HOME.items():
        module, attr = home.split(":")
        assert getattr(package, name) is getattr(importlib.import_module(f"crawler.registry.{module}"), attr)


# The registry's one query style (crawler.registry.sql): SQL text with %(name)s placeholders on the driver.
# SQLAlchemy is its pool and its schema (SQLModel, create_all), never a query builder; and no statement is written
# with positional placeholders.
QUERY_BUILDERS = {"select", "insert", "update", "delete", "text", "func", "case", "literal", "inspect", "and_",
                  "or_", "not_", "exists", "bindparam"}  # fmt: skip
POSITIONAL = ("= ?", "(?", "?)", "?,", "%s")


def test_the_registry_speaks_one_query_style():
    builders, positional = [], []
    for module, path in _modules().items():
        if not module.startswith("crawler.registry"):
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ("sqlalchemy", "sqlmodel"):
                ddl = module == "crawler.registry.schema"  # an index on an expression: text() of the schema
                builders += [
                    f"{module}: {a.name}" for a in node.names if a.name in QUERY_BUILDERS - ({"text"} if ddl else set())
                ]
            if (
                isinstance(node, ast.Attribute)
                and node.attr in ("c", "exec_driver_sql")
                and module not in ("crawler.registry.sql", "crawler.registry.schema")  # the tables' own columns
            ):
                positional.append(f"{module}:{node.lineno} uses .{node.attr} (a Core column or a bare driver call)")
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and "SELECT" in node.value.upper():
                positional += [f"{module}:{node.lineno} {mark!r}" for mark in POSITIONAL if mark in node.value]
    assert builders == []
    assert positional == []


def test_the_query_style_check_sees_a_core_query():
    tree = ast.parse("from sqlalchemy import select\nq = 'SELECT id FROM model WHERE id = ?'\n")
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names]
    strings = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    assert set(names) & QUERY_BUILDERS and any(m in s for s in strings for m in POSITIONAL)
