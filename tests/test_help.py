"""Every command's --help as a user sees it at 80 columns: no line wider, and metavars that say what to type
(``MODEL...``, ``PATH...``), never a Python type (``<list[str]>``) or a doubled ellipsis (``[MODEL...]...``)."""

import os
import re
import subprocess
import sys
from urllib.parse import urlsplit

import pytest
import typer
from typer.testing import CliRunner

from advisor.cli.main import app
from crawler.civitai.hosts import CIVITAI_HOSTS
from data.settings import CIVITAI as DEFAULT_URL
from tests.conftest import ROOT


def command_paths(command=None, path: tuple[str, ...] = ()):
    """Every command and subcommand, the top level first: ``()``, ``("build",)``, ``("crawl", "civitai")``, ..."""
    command = command or typer.main.get_command(app)
    yield path
    for name, sub in getattr(command, "commands", {}).items():  # groups have .commands (typer's vendored click)
        yield from command_paths(sub, (*path, name))


COMMANDS = list(command_paths())
TYPE_TAG = re.compile(r"<(?:list\[|tuple\[|dict\[|(?:str|int|float|bool|Path|path|dict|tuple|datetime)>)")


def help_at_80(path: tuple[str, ...]):
    """--help in process, as a terminal of 80 columns shows it: click wraps help two columns short of the
    terminal's width, and CliRunner would force 80, so the width is given as click takes it from COLUMNS=80
    (test_in_process_help_is_what_a_terminal_shows holds this to a real run)."""
    return CliRunner().invoke(app, [*path, "--help"], prog_name="inpaint-advisor", env={"COLUMNS": "80"},
                              terminal_width=78)  # fmt: skip


def test_every_command_is_walked():
    names = {" ".join(p) for p in COMMANDS}
    assert {"", "lookup", "probe", "build", "merge", "scan", "status", "worker", "crawl civitai", "crawl hf",
            "crawl all", "cache list", "cache clear", "schedule install", "schedule show", "schedule remove",
            "jobs", "jobs retry", "jobs cancel"} <= names  # fmt: skip


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "inpaint-advisor")
def test_help_fits_80_columns_with_plain_metavars(path):
    result = help_at_80(path)
    assert result.exit_code == 0, result.output
    text = result.output
    assert text.startswith(" ".join(["Usage: inpaint-advisor", *path]) + " ")
    wide = [line for line in text.splitlines() if len(line) > 80]
    assert not wide, f"wider than 80 columns: {wide}"
    assert not TYPE_TAG.search(text), TYPE_TAG.search(text)
    assert "]..." not in text and "…" not in text  # no doubled ellipsis; nothing cut short
    assert not [line for line in text.splitlines() if line.endswith("...")], text  # a command's summary cut


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "inpaint-advisor")
def test_help_examples_use_the_default_civitai_host(path):
    for url in re.findall(r"https?://[^\s)]+", help_at_80(path).output):
        host = urlsplit(url).hostname or ""
        if host.split(".")[0] == "civitai" or host in CIVITAI_HOSTS:
            assert host == urlsplit(DEFAULT_URL).hostname, url


def test_in_process_help_is_what_a_terminal_shows():
    run = subprocess.run([sys.executable, "-m", "advisor", "build", "--help"], capture_output=True, text=True,
                         env={**os.environ, "COLUMNS": "80"}, timeout=60)  # fmt: skip
    assert run.returncode == 0 and run.stdout == help_at_80(("build",)).output


@pytest.mark.parametrize("path", [p for p in COMMANDS if p], ids=" ".join)
def test_every_command_shows_an_example(path):
    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]  # type: ignore[attr-defined]
    if getattr(command, "commands", None) and not getattr(command, "invoke_without_command", False):
        return  # a group: its commands have them (README.md shows a group by its first command's)
    assert "Examples:" in help_at_80(path).output


def test_every_option_with_a_metavar_declares_its_flags():
    # typer 0.27 (with click 8.5), which the requirement allows, named an option without declared flags after
    # its metavar (`--URL` for `url` with metavar URL): an option whose metavar is set names its flags itself
    import ast

    undeclared = []
    for path in (ROOT / "advisor" / "cli").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "Option":
                has_metavar = any(k.arg == "metavar" for k in node.keywords)
                flags = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
                if has_metavar and not any(f.startswith("-") for f in flags):
                    undeclared.append(f"{path.name}:{node.lineno}")
    assert undeclared == []
