"""Start-up fast path for `inpaint-advisor lookup QUERY [--offline] [--json] [--db DB]`.

`lookup` must answer cold in well under half a second, and importing typer (which now brings pydantic) costs
~150 ms of that. The plain forms of the command are parsed here; anything else (`--help`, unknown options)
goes through the typer app, which defines the same command.
"""

import os
import sys


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
    from rich.console import Console
    from rich.markup import escape

    from advisor import jsonout, render
    from advisor.lookup import lookup
    from crawler.registry.errors import RegistryError

    db = db or os.environ.get("INPAINT_ADVISOR_DB")
    try:
        result = lookup(query, db=db, offline=offline)
    except ValueError as exc:
        Console(stderr=True).print(f"[red]error:[/] {escape(str(exc))}", soft_wrap=True)
        return 2
    except RegistryError as exc:
        Console(stderr=True).print(f"[red]error:[/] {escape(str(exc))}", soft_wrap=True)
        return exc.exit_code
    out = Console()
    if as_json:
        out.print_json(jsonout.dumps(result))
    else:
        render.lookup_result(out, result)
    return 0 if result.answered else 1


def main() -> None:
    code = try_lookup(sys.argv[1:])
    if code is not None:
        sys.exit(code)
    from advisor.cli import app

    app()
