"""What every command shares: the registry and JSON options, how a command fails, and URL checking."""

from datetime import timedelta
from typing import Annotated
from urllib.parse import urlsplit

import typer

from advisor.cli.output import fail, fail_for

DbOption = Annotated[
    str | None,
    typer.Option("--db", envvar="INPAINT_ADVISOR_DB", metavar="PATH|URL", show_default="the user data dir",
                 help="Registry: a SQLite file or postgresql+psycopg://user@host/db."),
]  # fmt: skip
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts (errors too) instead of tables.")]


def die(message: str, *, code: str, exit_code: int = 1, as_json: bool = False) -> typer.Exit:
    """``raise die(...)``: report the failure (see advisor.cli.output) and end with ``exit_code``."""
    return typer.Exit(fail(message, code=code, exit_code=exit_code, as_json=as_json))


def die_for(exc: BaseException, *, as_json: bool) -> typer.Exit:
    """``raise die_for(exc)`` for the library errors every command may meet; re-raises anything else."""
    code = fail_for(exc, as_json=as_json)
    if code is None:
        raise exc
    return typer.Exit(code)


def http_url(value: str | None) -> str | None:
    """A typer callback: an http(s) URL with a host, or a usage error."""
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise typer.BadParameter(f"{value!r} is not an http:// or https:// URL")
    return value


_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def duration(value: str) -> timedelta:
    """A typer parser: ``30m``, ``6h``, ``7d``, ``2w`` (or plain seconds) as a timedelta, or a usage error."""
    import re

    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|m|min|h|d|w)?\s*", value or "")
    if not match or float(match[1]) <= 0:
        raise typer.BadParameter(f"{value!r} is not a duration like 30m, 6h, 7d or 2w")
    return timedelta(seconds=float(match[1]) * _UNITS[match[2] or "s"])


def run_batch_and_report(queries: list[str], *, as_json: bool, **batch_options) -> None:
    """`scan --build` and `build --missing`: run the batch with a line per item, one summary, exit 1 if any
    item failed."""
    from advisor.build import run_batch
    from advisor.cli import render
    from advisor.cli.output import err, out, print_json

    def on_item(item) -> None:
        if not as_json:
            err.print(render.line((f"{item.status}: ", "bold"), item.path))

    done = run_batch(queries, on_item=on_item, **batch_options)
    if as_json:
        print_json(done)
    else:
        render.batch_result(out, done)
    if done.count("failed"):
        raise typer.Exit(1)
