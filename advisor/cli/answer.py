"""`lookup`'s answer printed, or its failure reported: the command itself, shared by the fast path (fastpath.py)
and the typer command (lookup.py), so it imports no typer."""



def run_lookup(query: str, *, db: str | None, offline: bool, as_json: bool, show_all: bool = False) -> int:
    """The lookup command itself; returns its exit status."""
    from advisor.advice.lookup import lookup
    from advisor.cli import render
    from advisor.cli.output import USAGE, fail, fail_for, out, print_json

    try:
        result = lookup(query, db=db, offline=offline)  # no --db: the registry the settings name
    except Exception as exc:
        code = fail_for(exc, as_json=as_json)
        if code is not None:
            return code
        if isinstance(exc, ValueError):  # a query a parser under QueryError choked on: still the query's fault
            return fail(str(exc), code="bad-query", exit_code=USAGE, as_json=as_json)
        raise
    if as_json:
        print_json(result)
    else:
        render.lookup_result(out, result, full=show_all)
    return 0 if result.answered else 1
