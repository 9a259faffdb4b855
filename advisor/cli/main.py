"""The typer application with every command registered: one module per command group (lookup.py: lookup and
probe; crawl.py; status.py; merge.py; build.py; cache.py; schedule.py; scan.py; team.py), each registering its
commands when imported here. `fastpath.main` (the entry point) comes here for anything but a plain `lookup`.

Usage errors end like every other failure: with ``--json``, one JSON object on stdout and exit status 2.
"""

import sys

import typer

from advisor.cli import build, cache, crawl, get, lookup, merge, scan, schedule, status, team  # noqa: F401  (each module registers its commands)
from advisor.cli.app import app

__all__ = ["app", "main", "run"]


def run(argv: list[str]) -> int:
    """Run the command line ``argv`` (without the program name); its exit status. Usage errors end like every
    other failure (with ``--json``: one JSON object on stdout)."""
    from advisor.cli.output import USAGE, fail

    try:
        code = app(args=argv, prog_name="inpaint-advisor", standalone_mode=False)
    except typer.TyperException as exc:  # click's usage errors (typer vendors click): bad options, missing args
        if _asks_json(argv):
            return fail(exc.format_message(), code="usage", exit_code=getattr(exc, "exit_code", USAGE),
                        as_json=True)  # fmt: skip
        exc.show()  # type: ignore[attr-defined]  # click's ClickException.show, which typer's stubs do not declare
        return getattr(exc, "exit_code", USAGE)
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        return 130
    return code if isinstance(code, int) else 0


def _asks_json(argv: list[str]) -> bool:
    """``--json`` among the options (``--json=1`` too, which is itself the usage error), not after ``--``."""
    options = argv[: argv.index("--")] if "--" in argv else argv
    return any(a == "--json" or a.startswith("--json=") for a in options)


def main(argv: list[str] | None = None) -> None:
    sys.exit(run(sys.argv[1:] if argv is None else argv))
