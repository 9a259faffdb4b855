"""Start-up fast path for `inpaint-advisor lookup QUERY [--offline] [--json] [--db DB]`.

`lookup` must answer cold in well under half a second, and importing typer (which now brings pydantic) costs
~150 ms of that. The plain forms of the command are parsed here; anything else (`--help`, unknown options)
goes through the typer app, which defines the same command and calls ``answer.run_lookup`` too.
"""

import os
import sys

from advisor.cli.answer import run_lookup


def try_lookup(argv: list[str]) -> int | None:
    """The exit code if ``argv`` was a plain lookup that this handled, else None."""
    if not argv or argv[0] != "lookup":
        return None
    query, offline, as_json, db = None, False, False, None
    args = iter(argv[1:])
    for arg in args:
        if arg == "--offline":
            offline = True
        elif arg == "--json":
            as_json = True
        elif arg == "--db":
            db = next(args, None)
            if db is None:
                return None
        elif arg.startswith("--db="):
            db = arg.split("=", 1)[1]
        elif arg.startswith("-") or query is not None:
            return None  # --help, -h, unknown options, extra arguments: typer explains
        else:
            query = arg
    if query is None:
        return None
    return run_lookup(query, db=db, offline=offline, as_json=as_json)


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
