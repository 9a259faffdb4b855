"""`status`: what the registry holds."""


from datetime import timedelta
from typing import Annotated

import typer

from advisor.cli.app import PlainCommand, app
from advisor.cli.common import DbOption, JsonOption, die, die_for, duration


@app.command(cls=PlainCommand)
def status(
    check: Annotated[bool, typer.Option("--check", help="Health check for monitoring: exit 0 healthy, 1 not.")] = False,
    max_age: Annotated[timedelta, typer.Option("--max-age", parser=duration, metavar="DURATION",
                                               help="With --check: the oldest a source's last successful crawl "
                                               "may be (30m, 24h, 7d).")] = "24h",  # type: ignore[assignment]  # fmt: skip
    # (typer passes a default through parser=duration, as it does the option's text)
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show what the registry holds: models per family, inpainting coverage, unknown base models, official
    checkpoints alive or gone, recent crawls. Reads only: never creates or changes a registry.

    With --check it answers one question for a monitor: is the registry kept fresh? Exit 1 when a source
    crawled here has not had a successful crawl within --max-age, when its last crawl failed, when an official
    checkpoint is gone or changed, or when there is no registry; the reasons are printed (or in JSON).

    \b
    Examples:
      inpaint-advisor status
      inpaint-advisor status --json
      inpaint-advisor status --check --max-age 12h --json
    """  # noqa: D301
    from advisor.cli import render
    from advisor.cli.output import out, print_json

    if check:
        _check(db, max_age, as_json)
        return
    st = _read(lambda reg: reg.status(), db, as_json,
               "{}: fill one with `inpaint-advisor crawl civitai` (and `crawl hf`)")  # fmt: skip
    if as_json:
        print_json(st)
    else:
        render.registry_status(out, st)


def _check(db, max_age: timedelta, as_json: bool) -> None:
    from advisor.cli import render
    from advisor.cli.output import out, print_json
    from crawler import health

    report = _read(lambda reg: health.check(reg, max_age), db, as_json, "unhealthy: {}", no_registry_exit=1)
    if as_json:
        print_json(report)
    else:
        render.health(out, report)
    if not report.healthy:
        raise typer.Exit(1)


def _read(query, db, as_json: bool, no_registry: str, no_registry_exit: int | None = None):
    """``query(registry)`` on the registry opened read-only; a missing or broken registry is one line."""
    from crawler import registry

    try:
        return query(registry.open(db, "read"))
    except registry.NoRegistry as exc:
        raise die(no_registry.format(exc), code=exc.code, exit_code=no_registry_exit or exc.exit_code,
                  as_json=as_json) from None  # fmt: skip
    except Exception as exc:
        error = registry.describe_error(exc, db)
        raise die_for(error or exc, as_json=as_json) from None
