"""Start-up fast path for `inpaint-advisor lookup QUERY [--offline] [--json] [--db DB]`.

`lookup` must answer cold in well under half a second, and importing typer (which now brings pydantic) costs
~150 ms of that. The plain forms of the command are parsed here; anything else (`--help`, unknown options)
goes through the typer app, which defines the same command and calls ``answer.run_lookup`` too.
"""

import os
import sys
from typing import Any

from advisor.cli.answer import run_lookup

# The options of typer's `lookup` (advisor/cli/lookup.py), by their parameter names: tests/test_fastpath.py holds
# the two definitions to the same options and the same answers.
FLAGS = {"--offline": "offline", "--json": "as_json", "--all": "show_all"}
VALUED = {"--db": "db"}


def try_lookup(argv: list[str]) -> int | None:
    """The exit code if ``argv`` was a plain lookup that this handled, else None."""
    if not argv or argv[0] != "lookup":
        return None
    query = None
    given: dict[str, Any] = {name: False for name in FLAGS.values()} | {name: None for name in VALUED.values()}
    args = iter(argv[1:])
    for arg in args:
        option, _, value = arg.partition("=")
        if arg in FLAGS:
            given[FLAGS[arg]] = True
        elif option in VALUED:
            given[VALUED[option]] = value if "=" in arg else next(args, None)
            if given[VALUED[option]] is None:
                return None
        elif arg.startswith("-") or query is not None:
            return None  # --help, -h, unknown options, extra arguments: typer explains
        else:
            query = arg
    if query is None:
        return None
    return run_lookup(query, **given)


def main() -> None:
    argv = sys.argv[1:]
    code = try_lookup(argv)
    if code is None:
        from advisor.cli.main import run

        code = run(argv)
    if argv[:1] == ["merge"] and "torch" in sys.modules:
        # Tearing down torch's modules takes half a second and a merge has nothing left to clean up: its output
        # is closed and renamed, its inputs unmapped.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
