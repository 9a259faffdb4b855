"""What the docs generate from the code, called from the ``[[[cog ... ]]]`` sections of README.md and docs/*.md.

``python3 tasks.py docs`` rewrites those sections (``cogapp -r``) and ``python3 tasks.py lint`` checks them
(``cogapp --check``), so a change to a command's --help, a result type, ``data/settings.json`` or
``data/error_codes.json`` that the docs do not follow fails CI. Every function returns Markdown text that
depends on the code alone: help at a fixed 80 columns without colour, no paths, no dates.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import io
import re
import textwrap
import tokenize
import types
import typing
from datetime import datetime
from functools import cache, partial
from pathlib import Path

PROG = "inpaint-advisor"
WIDTH = 80  # what a user sees with COLUMNS=80; tests/test_help.py holds every screen to it


# -- commands, from --help ------------------------------------------------------------------------------------


def command_paths(command=None, path: tuple[str, ...] = ()):
    """Every command and subcommand in the order --help lists them, the top level first: ``()``,
    ``("lookup",)``, ..., ``("crawl", "civitai")``."""
    if command is None:
        import typer

        from advisor.cli.main import app

        command = typer.main.get_command(app)
    yield path
    for name, sub in getattr(command, "commands", {}).items():  # groups have .commands (typer's vendored click)
        yield from command_paths(sub, (*path, name))


def _command(path: tuple[str, ...]):
    import typer

    from advisor.cli.main import app

    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]  # type: ignore[attr-defined]
    return command


@cache
def help_text(path: tuple[str, ...]) -> str:
    """``inpaint-advisor PATH --help`` as a user sees it with COLUMNS=80: in process, no colour, none of the
    settings that could show up in it taken from this machine's environment."""
    import os
    from unittest import mock

    from typer.testing import CliRunner

    from advisor.cli.main import app

    # the whole run in a clean environment: typer reads its completion options' settings before CliRunner's env=
    unset = [v["name"] for v in _load("settings")["variables"]] + ["_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION"]
    with mock.patch.dict(os.environ, {"COLUMNS": str(WIDTH), "LINES": "25", "NO_COLOR": "1", "TERM": "dumb"}):
        for name in unset:
            os.environ.pop(name, None)
        # click wraps help two columns short of the terminal (CliRunner would force 80): given as from COLUMNS=80
        result = CliRunner().invoke(app, [*path, "--help"], prog_name=PROG, terminal_width=WIDTH - 2)
    if result.exit_code != 0:
        raise RuntimeError(f"{PROG} {' '.join(path)} --help exited {result.exit_code}: {result.output}")
    return result.output


def anchor(title: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


def _title(path: tuple[str, ...]) -> str:
    return " ".join([PROG, *path])


def commands() -> str:
    """docs/commands.md: a contents list, then every command's --help."""
    paths = list(command_paths())
    lines = [f"- [`{_title(p)}`](#{anchor(_title(p))})" for p in paths]
    parts = ["\n".join(lines) + "\n"]
    for path in paths:
        parts.append(f"## {_title(path)}\n\n```text\n{help_text(path).rstrip()}\n```\n")
    return "\n".join(parts)


def summary(path: tuple[str, ...]) -> str:
    """A command's first sentence: its docstring's, or its group's help."""
    text = inspect.cleandoc(_command(path).help or "")
    first = " ".join(text.split("\n\n")[0].split())
    match = re.match(r"(.+?[.?!])(\s|$)", first)
    return match[1] if match else first


def examples(path: tuple[str, ...]) -> list[str]:
    """The examples of a command's --help (a ``\\``-continued one as one string of lines), or its group's that
    run it."""
    found, current, inside = [], [], False
    for line in inspect.cleandoc(_command(path).help or "").splitlines():
        if line.strip() == "Examples:":
            inside = True
            continue
        if inside and not line.startswith(" ") and line.strip():
            break
        words = line.split()
        if inside and words and (current or words[0] == PROG or "=" in words[0]):  # (VAR=value inpaint-advisor ...)
            current.append(re.sub(r"\s{2,}#", "  #", line.strip()) if not current else "    " + line.strip())
            if not line.rstrip().endswith("\\"):
                found.append("\n".join(current))
                current = []
    if not found and len(path) > 1:
        return [e for e in examples(path[:-1]) if e.startswith(_title(path) + " ")]
    return found


# The front page's order: what a new user needs first. Generating fails when a command is missing here.
FRONT_PAGE = ["lookup", "probe", "build", "get", "scan", "merge", "cache", "crawl", "status", "schedule", "worker",
              "jobs"]


def front_page_commands(link: str = "docs/commands.md") -> str:
    """README.md: each top-level command, its first sentence and one example (a group's: its first command's)."""
    top = [p[0] for p in command_paths() if len(p) == 1]
    if sorted(top) != sorted(FRONT_PAGE):
        raise RuntimeError(f"docs/_gen.py FRONT_PAGE lists {sorted(FRONT_PAGE)}, the CLI has {sorted(top)}")
    out = []
    for name in FRONT_PAGE:
        command = _command((name,))
        first = (name,)
        if getattr(command, "commands", None) and not examples(first):
            first = (name, next(iter(command.commands)))
        example = examples(first)[0]
        out.append(f"- [`{name}`]({link}#{anchor(_title((name,)))}): {summary((name,))}\n\n"
                   f"  ```console\n  $ {example.replace(chr(10), chr(10) + '  ')}\n  ```\n")  # fmt: skip
    return "\n".join(out)


# -- data tables ------------------------------------------------------------------------------------------------


def _load(name: str) -> dict:
    import data

    return data.load(name)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def settings(scope: str) -> str:
    """docs/configuration.md: the environment variables of one scope (user, tuning, development)."""
    rows = ["| variable | meaning | default | used by |", "| --- | --- | --- | --- |"]
    for v in _load("settings")["variables"]:
        if v["scope"] != scope:
            continue
        name = f"`{v['name']}`" + (f" (or `{v['option']}`)" if v["option"] else "")
        rows.append(f"| {_cell(name)} | {_cell(v['meaning'])} | {_cell(v['default'])} | {_cell(v['used_by'])} |")
    return "\n".join(rows) + "\n"


def error_codes() -> str:
    """docs/errors.md: every error code, its exit status and meaning, grouped as in data/error_codes.json."""
    rows = ["| code | exit | where | meaning |", "| --- | --- | --- | --- |"]
    for c in _load("error_codes")["codes"]:
        rows.append(f"| `{c['code']}` | {c['exit']} | {_cell(c['group'])} | {_cell(c['meaning'])} |")
    return "\n".join(rows) + "\n"


def exit_statuses() -> str:
    """The exit statuses the error codes end with, each with its codes."""
    by_exit: dict[int, list[str]] = {}
    for c in _load("error_codes")["codes"]:
        by_exit.setdefault(c["exit"], []).append(f"`{c['code']}`")
    return "".join(f"- **{status}**: {', '.join(codes)}\n" for status, codes in sorted(by_exit.items()))


# -- JSON shapes, from the result types -------------------------------------------------------------------------

# What each command prints with --json: (command, the shape in Markdown, the result types it holds). The types
# are "module:Class"; a shape names them by link.
OUTPUTS = [
    ("lookup", "{LookupResult}", ["advisor.advice.lookup:LookupResult"]),
    ("probe", "{ProbeResult}", ["advisor.local.probe:ProbeResult"]),
    ("build", "{BuildResult}", ["advisor.build.builder:BuildResult"]),
    ("build --missing, scan --build", "{BatchResult}", ["advisor.build.batch:BatchResult"]),
    ("build --enqueue, get --enqueue", '`{"queued": [`{Queued}`, ...]}`', ["advisor.team.worker:Queued"]),
    ("get", "{GetResult}", ["advisor.get.result:GetResult"]),
    ("get --manifest", '`{"query", "ui", "root", "answer": `{Answer}`, "files": [{"kind", "name", "url", "sha256", '
     '"size", "destination", "state"}, ...], "build_output", "needs", "steps"}` (a build\'s inputs are files too, '
     'with `"kind": "build input A"` and no destination)', ["advisor.get.result:Answer"]),
    ("scan", "{ScanResult} (one folder), `[`{ScanResult}`, ...]` (several)", ["advisor.local.scan:ScanResult"]),
    ("merge", "{MergeResult}", ["merge.engine:MergeResult"]),
    ("crawl civitai", "{CrawlSummary}", ["crawler.civitai:CrawlSummary"]),
    ("crawl hf", "{HfCrawlSummary}", ["crawler.hf:HfCrawlSummary"]),
    ("crawl all", "{AllSummary}", ["crawler.crawl_all:AllSummary"]),
    ("status", "{RegistryStatus}", ["crawler.registry.stats:RegistryStatus"]),
    ("status --check", "{Health}", ["crawler.health:Health"]),
    ("cache list", "{CacheReport}", ["advisor.build.cache:CacheReport"]),
    ("cache clear", "{Cleared}", ["advisor.build.cache:Cleared"]),
    ("schedule install, schedule remove", "{Installed}", ["advisor.team.schedules:Installed"]),
    ("schedule show", '{Shown} and `"last": [`{SourceRuns}`, ...]`',
     ["advisor.team.schedules:Shown", "crawler.registry.stats:SourceRuns"]),
    ("schedule run", '{AllSummary}, or `{"skipped": "..."}` (an incremental run gave way to a scheduled crawl)',
     ["crawler.crawl_all:AllSummary"]),
    ("jobs", '`{"jobs": [`{JobRecord}`, ...]}`', ["crawler.registry.queue:JobRecord"]),
    ("jobs show ID", "{JobRecord} (with its `events`)", ["crawler.registry.queue:JobRecord"]),
    ("jobs retry ID", '`{"retried": ID}`', []),
    ("jobs cancel ID", '`{"cancelled": ID}`', []),
    ("any command that fails", '`{"error": {"code": "...", "message": "..."}}`: see [errors.md](errors.md)', []),
]

# Where an annotation says less than the JSON holds (``object``), or the JSON is not the field as typed.
_OVERRIDES = {
    ("Command", "argv"): "list[str]",  # an EnvRef is written as "$NAME" (with its prefix)
    ("Partner", "target"): "advisor.advice.ladder:Target | None",
    ("Partner", "command"): "advisor.advice.commands:Command | None",
    ("SourceResult", "summary"): "crawler.civitai:CrawlSummary | crawler.hf:HfCrawlSummary | None",
}

# Notes for keys a ``__json__`` method adds to the fields, or whose field has no comment to say it.
_NOTES = {
    ("Command", "argv"): "the argument list, to run without a shell (a variable for the shell to expand as `$NAME`)",
    ("Command", "shell"): "the command quoted to paste into a shell (`$NAME` left for the shell to expand; an "
                          "argument with a control character as `$'...'`)",
    ("Command", "env"): "the environment variables it expects",
    ("BatchResult", "done"): "items done",
    ("BatchResult", "skipped"): "items skipped",
    ("BatchResult", "failed"): "items that failed (the exit status is then 1)",
    ("CacheReport", "total_bytes"): "the prepared pairs' and files' sizes together",
    ("AllSummary", "ok"): "every source done (or stopped at `--max-pages`, resumable)",
}

_PRAGMA = re.compile(r"\s*(fmt: ?skip|noqa\b[:\w, -]*|type: ?ignore(\[[\w, -]+\])?)\s*")


def _resolve(spec: str):
    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


def _override(spec: str):
    """``"a.b:C | None"`` as a type."""
    parts = [p.strip() for p in spec.split("|")]
    builtin = {"None": type(None), "list[str]": list[str]}
    resolved = [builtin[p] if p in builtin else _resolve(p) for p in parts]
    result = resolved[0]
    for t in resolved[1:]:
        result = result | t
    return result


@cache
def _field_comments(cls) -> dict[str, str]:
    """Each field's comment in the class's source: the one after it on its line, else the comment lines just
    above it."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    comments = {tok.start[0]: tok.string for tok in tokenize.generate_tokens(io.StringIO(source).readline)
                if tok.type == tokenize.COMMENT}  # fmt: skip
    lines = source.splitlines()
    found = {}
    body = ast.parse(source).body[0]
    for node in getattr(body, "body", []):
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        said = [comments[n] for n in range(node.lineno, (node.end_lineno or node.lineno) + 1) if n in comments]
        if not _clean(" ".join(said)):
            above, n = [], node.lineno - 1
            while n in comments and lines[n - 1].strip().startswith("#"):
                above.insert(0, comments[n])
                n -= 1
            said = above
        found[node.target.id] = _clean(" ".join(said))
    return found


def _clean(comment: str) -> str:
    text = " ".join(part.strip().lstrip("#").strip() for part in comment.split(" #"))
    text = _PRAGMA.sub(" ", text.lstrip("#")).strip()
    return " ".join(text.split())


def _note(cls, name: str) -> str:
    for klass in cls.__mro__:  # an inherited field is commented where it is declared
        if name in klass.__dict__.get("__annotations__", {}):
            note = re.sub(r"``([^`]+)``", r"`\1`", _field_comments(klass).get(name, ""))
            return re.sub(r"\bone of ([A-Z][A-Z_]+)\b", partial(_one_of, klass.__module__), note)
    return ""


def _one_of(module: str, match: re.Match) -> str:
    """``one of ACTIONS`` in a comment, with the values of the module's ACTIONS."""
    values = getattr(importlib.import_module(module), match[1], None)
    if isinstance(values, tuple | list | frozenset | set) and all(isinstance(v, str) for v in values):
        return "one of " + " | ".join(f"`{v}`" for v in (sorted(values) if isinstance(values, set | frozenset)
                                                          else values))  # fmt: skip
    return match[0]


def _hints(cls) -> dict:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - a name only a type checker sees: take the annotations as written
        return {f.name: f.type for f in dataclasses.fields(cls)}


def _placeholder(t):
    """A value of type ``t`` to build an example result with (to ask its ``__json__`` for its keys)."""
    origin = typing.get_origin(t) or t
    if origin in (types.UnionType, typing.Union):
        return None
    return {list: [], dict: {}, set: set(), tuple: (), str: "", int: 0, float: 0.0, bool: False}.get(origin)


def _keys(cls) -> list[tuple[str, object, str]]:
    """(key, type, note) for each key of the class's JSON object, in the order it is written."""
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}

    def typed(name: str):
        spec = _OVERRIDES.get((cls.__name__, name))
        return _override(spec) if spec else hints.get(name, fields[name].type)

    def note(name: str) -> str:
        return (_note(cls, name) if name in fields else "") or _NOTES.get((cls.__name__, name), "")

    if not hasattr(cls, "__json__"):
        return [(name, typed(name), note(name)) for name in fields]
    required = {name: _placeholder(hints.get(name)) for name, f in fields.items()
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}  # fmt: skip
    written = cls(**required).__json__()
    keys = []
    for key, value in written.items():
        if key in fields:
            keys.append((key, typed(key), note(key)))
            continue
        prop = inspect.getattr_static(cls, key, None)  # a property's return annotation says more than its value
        hint = typing.get_type_hints(prop.fget).get("return") if isinstance(prop, property) and prop.fget else None
        keys.append((key, hint or type(value), note(key)))
    return keys


_SCALARS = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null", Path: "string (path)",
            datetime: "string (ISO 8601)", object: "any", dict: "object", list: "array"}  # fmt: skip


def _json_type(t, seen: list) -> str:
    """``t`` in JSON's words; a result type as a link to its table (and added to ``seen``)."""
    if isinstance(t, str):
        return t
    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin in (types.UnionType, typing.Union):
        return " \\| ".join(_json_type(a, seen) for a in args)
    if origin in (list, set, frozenset) or (origin is tuple and len(args) == 2 and args[1] is Ellipsis):
        return f"[{_json_type(args[0], seen)}]" if args else "array"
    if origin is tuple:
        return "[" + ", ".join(_json_type(a, seen) for a in args) + "]"
    if origin is dict:
        return f"{{{_json_type(args[0], seen)}: {_json_type(args[1], seen)}}}"
    if dataclasses.is_dataclass(t):
        if t not in seen:
            seen.append(t)
        return f"[{t.__name__}](#{anchor(t.__name__)})"
    return _SCALARS.get(t, getattr(t, "__name__", str(t)))


def _all_types() -> list:
    """Every result type the outputs hold, each once: each output's, then the types it holds, depth first."""
    seen: list = []

    def visit(cls) -> None:
        if cls in seen:
            return
        seen.append(cls)
        held: list = []
        for _, t, _ in _keys(cls):
            _json_type(t, held)
        for inner in held:
            visit(inner)

    for _, _, specs in OUTPUTS:
        for spec in specs:
            visit(_resolve(spec))
    names = [cls.__name__ for cls in seen]
    if len(names) != len(set(names)):
        raise RuntimeError(f"two result types share a name: {sorted(names)}")
    return seen


def json_outputs() -> str:
    """docs/json.md: what each command prints with --json."""
    rows = ["| command | prints |", "| --- | --- |"]
    for command, shape, _ in OUTPUTS:
        shown = re.sub(r"\{([A-Z]\w+)\}", lambda m: f"[{m[1]}](#{anchor(m[1])})", shape)
        rows.append(f"| `{command}` | {shown} |")
    return "\n".join(rows) + "\n"


def json_types() -> str:
    """docs/json.md: a table of keys per result type, from the dataclasses' fields and annotations."""
    parts = []
    for cls in _all_types():
        seen: list = []
        rows = [f"### {cls.__name__}\n", f"`{cls.__module__}.{cls.__qualname__}`\n",
                "| key | type | note |", "| --- | --- | --- |"]  # fmt: skip
        for key, t, note in _keys(cls):
            rows.append(f"| `{key}` | {_json_type(t, seen)} | {_cell(note)} |")
        parts.append("\n".join(rows) + "\n")
    return "\n".join(parts)


# -- how routes are weighed, from data/routes.json and the ladder ------------------------------------------------

# Example models: (label, family, Civitai's base model string, header markers). Their rankings are computed.
WEIGHED_EXAMPLES = [
    ("SD 1.5 fine-tune", "sd1", "SD 1.5", []),
    ("SD 1.5 anime fine-tune (tagged anime)", "sd1", "SD 1.5", ["tag:anime"]),
    ("SDXL fine-tune", "sdxl", "SDXL 1.0", []),
    ("SDXL Lightning (or Turbo, Hyper)", "sdxl", "SDXL Lightning", []),
    ("Pony", "pony", "Pony", []),
    ("Illustrious", "illustrious", "Illustrious", []),
    ("NoobAI v-pred", "noobai", "NoobAI", ["v_pred"]),
    ("SD 2.x 768 (v-prediction)", "sd2-768", "SD 2.1 768", []),
    ("FLUX.1", "flux1", "Flux.1 D", []),
    ("SD 3 / 3.5", "sd3", "SD 3.5", []),
    ("Kolors", "kolors", "Kolors", []),
]


def route_ranking() -> str:
    """docs/routes.md: what `lookup` ranks first and then for each example model, with the scores."""
    from advisor.advice.ladder import Subject, recommend

    names = {r["id"]: r["name"] for r in _load("routes")["routes"]}
    shown = {"official": "official model", "build": "build"}
    rows = ["| model | first | then |", "| --- | --- | --- |"]
    for label, family, base_model, markers in WEIGHED_EXAMPLES:
        rec, alternatives, _ = recommend(Subject(name=label, family=family, base_model=base_model,
                                                 prediction=[m for m in markers if not m.startswith("tag:")],
                                                 tags=[m[4:] for m in markers if m.startswith("tag:")]))  # fmt: skip
        ranked = [f"{names.get(r.route or '', shown.get(r.kind, r.kind))} ({r.score})" for r in [rec, *alternatives]]
        rows.append(f"| {label} | {_cell(ranked[0])} | {_cell(', '.join(ranked[1:]))} |")
    return "\n".join(rows) + "\n"


def carried() -> str:
    """docs/schedules.md: the settings a schedule takes from the shell that installs it."""
    from data.settings import CARRIED

    return "".join(f"- `{name}`\n" for name in CARRIED)


# -- the layout, from the modules' docstrings --------------------------------------------------------------------


def modules(package: str) -> str:
    """docs/architecture.md: each module of a package folder (``crawler/registry``) with its docstring's first
    sentence, then each subpackage (``advisor/build/``) with its ``__init__``'s."""
    root = Path(__file__).resolve().parent.parent
    folder = root / package
    entries = [(path.name, path) for path in sorted(folder.glob("*.py"))]
    entries += [(f"{sub.name}/", sub / "__init__.py") for sub in sorted(folder.iterdir())
                if (sub / "__init__.py").is_file()]  # fmt: skip
    rows = []
    for name, path in entries:
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        first = " ".join(doc.split("\n\n")[0].split())
        match = re.match(r"(.+?[.?!])(\s|$)", first)
        text = re.sub(r"``([^`]+)``", r"`\1`", match[1] if match else first)
        rows.append(f"- `{name}`" + (f": {text}" if text else ""))
    return "\n".join(rows) + "\n"


def ui_folders() -> str:
    """docs/get.md: where each UI keeps each kind of file (data/uis.json), with the source of each folder."""
    data = _load("uis")
    kinds = list(data["kinds"])
    rows = ["| UI | " + " | ".join(kinds) + " |", "| --- |" + " --- |" * len(kinds)]
    for ui in data["uis"]:
        cells = []
        for kind in kinds:
            folder = ui["folders"].get(kind)
            where = f"`{ui['models']}/{folder}`".replace("`./", "`") if folder else "—"
            source = ui["sources"].get(kind) or ui["sources"].get("folders") or ui["sources"].get("models_dir")
            cells.append(f"[{where}]({source})" if folder and source else where)
        marks = ", ".join(f"`{m}`" for m in ui["marks"])
        runs = f"; runs {', '.join(ui['runs'])} and their kin" if ui.get("runs") else ""
        rows.append(f"| **{ui['name']}** (`{ui['id']}`; root has {marks}{runs}) | " + " | ".join(cells) + " |")
    notes = [f"- **{ui['name']}**: {ui['notes']}" for ui in data["uis"] if ui.get("notes")]
    legend = [f"- `{kind}`: {what}" for kind, what in data["kinds"].items()]
    return "\n".join(rows) + "\n\n" + "\n".join(legend) + "\n\n" + "\n".join(notes) + "\n"
