"""`lookup`'s answer printed, or its failure reported: the command itself, shared by the fast path (fastpath.py)
and the typer command (lookup.py), so it imports no typer."""

import os


def run_lookup(query: str, *, db: str | None, offline: bool, as_json: bool) -> int:
    """The lookup command itself; returns its exit status."""
    from advisor.advice.lookup import NotFound, lookup
    from advisor.cli import render
    from advisor.cli.output import USAGE, fail, fail_for, out, print_json

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
