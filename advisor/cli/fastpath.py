"""Start-up fast path for `inpaint-advisor lookup QUERY [--offline] [--json] [--db DB]`.

`lookup` must answer cold in well under half a second, and importing typer (which now brings pydantic) costs
~150 ms of that. The plain forms of the command are parsed here; anything else (`--help`, unknown options)
goes through the typer app, which defines the same command and calls ``run_lookup`` too.
"""

import os
import sys


def run_lookup(query: str, *, db: str | None, offline: bool, as_json: bool) -> int:
    """The lookup command itself; returns its exit status."""
    from advisor import render
    from advisor.lookup import NotFound, lookup
    from advisor.output import USAGE, fail, fail_for, out, print_json

    try:
        result = lookup(query, db=db or os.environ.get("INPAINT_ADVISOR_DB"), offline=offline)
    except NotFound as exc:
        return fail(str(exc), code="not-found", as_json=as_json)
    except ValueError as exc:  # the query itself cannot be read
        return fail(str(exc), code="bad-query", exit_code=USAGE, as_json=as_json)
    except Exception as exc:
        code = fail_for(exc, as_json=as_json)
        if code is None:
            raise
        return code
    if as_json:
        print_json(result)
    else:
        render.lookup_result(out, result)
    return 0 if result.answered else 1


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
        from advisor.cli import run

        code = run(argv)
    if argv[:1] == ["merge"] and "torch" in sys.modules:
        # Tearing down torch's modules takes half a second and a merge has nothing left to clean up: its output
        # is closed and renamed, its inputs unmapped.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
