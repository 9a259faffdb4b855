"""The docs generated from the code stay true to it: the settings table names every environment variable the
code reads (and nothing else), the error-code table every code a command can report, with its exit status;
the README stays a front page; every relative link in README.md and docs/ leads somewhere."""

import ast
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("advisor", "crawler", "merge", "data")
ENV_NAME = re.compile(r"[A-Z][A-Z0-9_]*")


def _table(name: str) -> dict:
    return json.loads((ROOT / "data" / f"{name}.json").read_text(encoding="utf-8"))


def _sources(*folders: str) -> dict[Path, ast.Module]:
    return {p: ast.parse(p.read_text(encoding="utf-8")) for f in folders for p in sorted((ROOT / f).rglob("*.py"))}


# -- environment variables ---------------------------------------------------------------------------------------


def _is_environ(node: ast.AST) -> bool:
    """``os.environ`` (or a bare ``environ``)."""
    return (isinstance(node, ast.Attribute) and node.attr == "environ") or (
        isinstance(node, ast.Name) and node.id == "environ")  # fmt: skip


def _env_arg(node: ast.AST) -> ast.AST | None:
    """The name argument of an environment read: ``os.environ.get(X)``, ``.setdefault(X)``, ``.pop(X)``,
    ``os.environ[X]``, ``os.getenv(X)``; None for anything else."""
    if isinstance(node, ast.Subscript) and _is_environ(node.value):
        return node.slice
    if isinstance(node, ast.Call) and node.args:
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr in ("get", "setdefault", "pop") and _is_environ(func.value):
            return node.args[0]
        if isinstance(func, ast.Attribute) and func.attr == "getenv" or isinstance(func, ast.Name) and \
                func.id == "getenv":  # fmt: skip
            return node.args[0]
    return None


def _strings(node: ast.AST | None, constants: dict[str, ast.AST], loops: dict[str, ast.AST]) -> list[str] | None:
    """The variable names ``node`` can stand for: a literal, a module-level constant, or the variable of a loop
    over a constant tuple (``for k in CARRIED``); None when it cannot be told."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.Name) and node.id in loops:
        return _strings(loops[node.id], constants, {})
    if isinstance(node, ast.Name) and node.id in constants:
        return _strings(constants[node.id], constants, {})
    if isinstance(node, ast.Tuple | ast.List):
        found = [_strings(e, constants, {}) for e in node.elts]
        return None if any(f is None for f in found) else [s for f in found if f for s in f]
    return None


def env_reads() -> tuple[dict[str, set[str]], list[str]]:
    """(variable -> files that read it, reads whose variable cannot be told) in advisor/, crawler/, merge/, data/."""
    found: dict[str, set[str]] = {}
    unknown: list[str] = []
    for path, tree in _sources(*PACKAGES).items():
        where = str(path.relative_to(ROOT))
        constants = {t.id: node.value for node in tree.body if isinstance(node, ast.Assign)
                     for t in node.targets if isinstance(t, ast.Name)}  # fmt: skip
        loops = {g.target.id: g.iter for node in ast.walk(tree) if isinstance(node, ast.comprehension | ast.For)
                 for g in [node] if isinstance(g.target, ast.Name)}  # fmt: skip
        # a helper that reads the variable its caller names: def _seconds(name, default): os.environ.get(name ...)
        helpers: dict[str, int] = {}
        in_helpers: set[int] = set()  # the helpers' own reads: their callers name the variable
        for fn in ast.walk(tree):
            if isinstance(fn, ast.FunctionDef):
                params = [a.arg for a in fn.args.args]
                for node in ast.walk(fn):
                    arg = _env_arg(node)
                    if isinstance(arg, ast.Name) and arg.id in params:
                        helpers[fn.name] = params.index(arg.id)
                        in_helpers.add(id(node))
        for node in ast.walk(tree):
            args = [_env_arg(node)] if id(node) not in in_helpers else []
            if isinstance(node, ast.Call):
                args += [k.value for k in node.keywords if k.arg == "envvar"]
                name = node.func.id if isinstance(node.func, ast.Name) else None
                if name in helpers and len(node.args) > helpers[name]:
                    args.append(node.args[helpers[name]])
            for arg in args:
                if arg is None:
                    continue
                names = _strings(arg, constants, loops)
                if names is None:
                    unknown.append(f"{where}:{node.lineno}")
                    continue
                for n in names:
                    found.setdefault(n, set()).add(where)
    return found, unknown


def test_env_reads_are_found():
    found, _ = env_reads()
    # one of each way the code reads a variable: a literal, a module constant, envvar=, a helper, a loop
    assert {"INPAINT_ADVISOR_CACHE", "INPAINT_ADVISOR_DB", "CIVITAI_API_TOKEN", "INPAINT_ADVISOR_WORKER_HEARTBEAT",
            "HF_HUB_CACHE", "XDG_CONFIG_HOME"} <= set(found)  # fmt: skip


def test_settings_table_names_every_variable_the_code_reads_and_no_other():
    found, unknown = env_reads()
    assert not unknown, f"environment reads whose variable this test cannot tell: {unknown}"
    table = {v["name"]: v for v in _table("settings")["variables"]}
    assert all(ENV_NAME.fullmatch(n) for n in table)
    missing = sorted(set(found) - set(table))
    assert not missing, f"read by the code, not in data/settings.json: {missing} ({[found[m] for m in missing]})"
    package_text = "".join(p.read_text(encoding="utf-8") for p in _sources(*PACKAGES))
    for name, v in table.items():
        assert v["scope"] in ("user", "tuning", "development") and v["meaning"] and v["default"], name
        if v["scope"] == "development":
            elsewhere = "".join(p.read_text(encoding="utf-8") for p in [*(ROOT / "tests").glob("*.py"),
                                                                         ROOT / "tasks.py", *(ROOT / ".ci").glob("*")]
                                if p.is_file())  # fmt: skip
            assert name in elsewhere and name not in found, f"{name}: not read by tests or tasks.py"
        elif v.get("read_by"):
            assert name in package_text and name not in found, f"{name}: named by the code, read by {v['read_by']}"
        else:
            assert name in found, f"{name} is in data/settings.json, but no code reads it"


# -- error codes -------------------------------------------------------------------------------------------------


def _exit_of(node: ast.AST | None) -> int | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return node.value
    if isinstance(node, ast.Name) and node.id == "USAGE":
        return 2
    return None


def error_codes() -> dict[str, set[int | None]]:
    """Every error code the source can report -> the exit statuses it ends with where the source fixes them
    (None where it is decided elsewhere): ``code="..."`` keywords, ``code = "..."`` class attributes (with the
    class's ``exit_code``, inherited), and the codes passed to an error class whose ``__init__`` takes ``code``
    (BuildError, DownloadError, ScheduleError), its default included."""
    trees = _sources("advisor", "crawler", "merge", "data")
    classes: dict[str, ast.ClassDef] = {n.name: n for t in trees.values() for n in ast.walk(t)
                                        if isinstance(n, ast.ClassDef)}  # fmt: skip

    def attribute(cls: ast.ClassDef | None, name: str):
        while cls is not None:
            for item in cls.body:
                if isinstance(item, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in item.targets):
                    return item.value
            base = cls.bases[0] if cls.bases else None
            cls = classes.get(base.id) if isinstance(base, ast.Name) else None
        return None

    takes_code = {}  # class -> (position of code, its default, position of exit_code, its default)
    for cls in classes.values():
        init = next((i for i in cls.body if isinstance(i, ast.FunctionDef) and i.name == "__init__"), None)
        params = [a.arg for a in init.args.args][1:] if init else []
        if "code" in params:
            assert init is not None
            defaults = dict(zip(params[len(params) - len(init.args.defaults):], init.args.defaults, strict=True))
            takes_code[cls.name] = (params.index("code"), defaults.get("code"),
                                    params.index("exit_code") if "exit_code" in params else None,
                                    defaults.get("exit_code"))  # fmt: skip

    def inherited(cls: ast.ClassDef):  # how a class without an __init__ of its own takes ``code``: its base's way
        if any(isinstance(i, ast.FunctionDef) and i.name == "__init__" for i in cls.body):
            return takes_code.get(cls.name)
        base = cls.bases[0] if cls.bases else None
        parent = classes.get(base.id) if isinstance(base, ast.Name) else None
        how = inherited(parent) if parent is not None else None
        return how and (how[0], attribute(cls, "code"), *how[2:])  # its own code is the default

    for cls in classes.values():
        if cls.name not in takes_code and (how := inherited(cls)):
            takes_code[cls.name] = how
    found: dict[str, set[int | None]] = {}
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                code = attribute(node, "code") if any(isinstance(i, ast.Assign) and any(
                    isinstance(t, ast.Name) and t.id == "code" for t in i.targets) for i in node.body) else None
                if isinstance(code, ast.Constant):
                    found.setdefault(code.value, set()).add(_exit_of(attribute(node, "exit_code")))
            if not isinstance(node, ast.Call):
                continue
            keywords = {k.arg: k.value for k in node.keywords}
            if isinstance(keywords.get("code"), ast.Constant):
                exit_code = keywords.get("exit_code", ast.Constant(1))  # die() and fail() end with 1 by default
                found.setdefault(keywords["code"].value, set()).add(_exit_of(exit_code))  # type: ignore[union-attr]
            name = node.func.id if isinstance(node.func, ast.Name) else \
                node.func.attr if isinstance(node.func, ast.Attribute) else None  # fmt: skip
            if name in takes_code:
                at, default, exit_at, exit_default = takes_code[name]
                code = node.args[at] if len(node.args) > at else keywords.get("code", default)
                status = node.args[exit_at] if exit_at is not None and len(node.args) > exit_at else \
                    keywords.get("exit_code", exit_default)  # fmt: skip
                if isinstance(code, ast.Constant):
                    found.setdefault(code.value, set()).add(_exit_of(status))
    return found


def test_error_codes_are_found():
    found = error_codes()
    # one of each way: a keyword, a class attribute, an error class's argument and its default
    assert {"crawl-locked", "no-registry", "registry-unreachable", "login-wall", "offline", "build-failed",
            "schedule-failed", "usage"} <= set(found)  # fmt: skip
    assert found["interrupted"] == {130}  # a status fixed where the code is reported (die, fail)
    assert found["needs-postgres"] == {None}  # an error class's: data/error_codes.json gives it


def test_error_code_table_is_every_code_with_its_exit_status():
    found = error_codes()
    table = {c["code"]: c for c in _table("error_codes")["codes"]}
    assert len(table) == len(_table("error_codes")["codes"]), "a code listed twice"
    assert not sorted(set(found) - set(table)), f"reported by the code, not in data/error_codes.json: " \
                                                f"{sorted(set(found) - set(table))}"  # fmt: skip
    assert not sorted(set(table) - set(found)), f"in data/error_codes.json, reported by no code: " \
                                                f"{sorted(set(table) - set(found))}"  # fmt: skip
    for code, statuses in found.items():
        fixed = statuses - {None}
        said = table[code]["exit"]
        assert fixed <= {said}, f"{code}: the code ends with {fixed}, data/error_codes.json says {said}"
        assert table[code]["meaning"] and table[code]["group"]


# -- the front page and the links --------------------------------------------------------------------------------

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def _prose(text: str) -> str:
    """Markdown without fenced code blocks and code spans (a link there is not a link)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def anchors(path: Path) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown file."""
    seen: dict[str, int] = {}
    found = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"),
                                                              flags=re.M | re.S), flags=re.M):  # fmt: skip
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        found.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return found


def test_readme_is_a_front_page():
    readme = ROOT / "README.md"
    assert readme.stat().st_size <= 10_240, f"README.md is {readme.stat().st_size} bytes: move reference to docs/"
    text = readme.read_text(encoding="utf-8")
    assert 'python3 tasks.py run lookup "SDXL 1.0"' in text and "python3 tasks.py test" in text
    assert "pip install inpaint-advisor" not in text  # not on PyPI: installed from a checkout


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_lead_somewhere(doc):
    broken = []
    for target in LINK.findall(_prose(doc.read_text(encoding="utf-8"))):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        file, _, fragment = target.partition("#")
        dest = (doc.parent / file).resolve() if file else doc
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
            broken.append(f"{target}: no such heading")
    assert not broken, f"{doc.relative_to(ROOT)}: {broken}"


def _gen():
    """docs/_gen.py, the generator the cog sections call."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_gen", ROOT / "docs" / "_gen.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_json_outputs_name_real_commands():
    gen = _gen()
    paths = {" ".join(p) for p in gen.command_paths()}
    named = set()
    for commands, _, _ in gen.OUTPUTS:
        for command in commands.split(", "):
            words = [w for w in command.split() if not w.startswith("-") and not w.isupper()]
            if not command.startswith("any command"):
                assert " ".join(words) in paths, command
                named.add(" ".join(words))
    leaves = {p for p in paths if p and not any(q.startswith(p + " ") for q in paths)} - {"worker"}  # no --json
    assert leaves <= named, f"commands whose --json docs/json.md does not describe: {sorted(leaves - named)}"
