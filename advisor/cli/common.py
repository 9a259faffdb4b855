"""What every command shares: the registry and JSON options, how a command fails, and URL checking."""

from typing import Annotated
from urllib.parse import urlsplit

import typer

from advisor.output import fail, fail_for

DbOption = Annotated[
    str | None,
    typer.Option("--db", envvar="INPAINT_ADVISOR_DB", metavar="PATH|URL", show_default="the user data dir",
                 help="Registry: a SQLite file or postgresql+psycopg://user@host/db."),
]  # fmt: skip
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts (errors too) instead of tables.")]


def die(message: str, *, code: str, exit_code: int = 1, as_json: bool = False) -> typer.Exit:
    """``raise die(...)``: report the failure (see advisor.output) and end with ``exit_code``."""
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
