"""`inpaint-advisor`: a thin typer layer over the library functions in crawler/, advisor/ and merge/. One module
per command group (lookup.py: lookup and probe; crawl.py; status.py; merge.py; build.py; cache.py;
schedule.py; scan.py); common.py holds what they share.

Usage errors end like every other failure: with ``--json``, one JSON object on stdout and exit status 2.
"""

import sys

import typer

from advisor.cli import build, cache, crawl, lookup, merge, scan, schedule, status, team  # noqa: F401  (each module registers its commands)
from advisor.cli.app import app

__all__ = ["app", "main"]


def main(argv: list[str] | None = None) -> None:
    from advisor.output import USAGE, fail

    argv = sys.argv[1:] if argv is None else argv
    try:
        code = app(args=argv, prog_name="inpaint-advisor", standalone_mode=False)
    except typer.TyperException as exc:  # click's usage errors (typer vendors click): bad options, missing args
        if "--json" in argv:
            sys.exit(fail(exc.format_message(), code="usage", exit_code=getattr(exc, "exit_code", USAGE),
                          as_json=True))  # fmt: skip
        exc.show()
        sys.exit(getattr(exc, "exit_code", USAGE))
    except typer.Abort:
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
