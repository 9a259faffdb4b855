"""Team mode: `worker` runs queued builds on this host; `jobs` lists, retries and cancels them. The queue is in
the PostgreSQL registry (procrastinate); `build --enqueue` fills it."""

from pathlib import Path
from typing import Annotated

import typer

from advisor.cli.app import SUBCOMMAND, PlainCommand, app
from advisor.cli.common import DbOption, JsonOption, die, die_for

SQLITE_HINT = ("; on one machine, `inpaint-advisor scan --build` and `build --missing` run the same builds in the "
               "foreground")  # fmt: skip


def team_failure(exc: BaseException, as_json: bool) -> typer.Exit:
    """A queue error as one line; a SQLite registry is told what to use instead."""
    from crawler.registry.queue import TeamModeNeedsPostgres

    if isinstance(exc, TeamModeNeedsPostgres):
        hint = SQLITE_HINT if "SQLite" in str(exc) else ""
        return die(f"{exc}{hint}", code=exc.code, exit_code=exc.exit_code, as_json=as_json)
    return die_for(exc, as_json=as_json)


@app.command(cls=PlainCommand)
def worker(
    out: Annotated[Path, typer.Option("--out", metavar="DIR", help="Where this host's builds go (shared storage, "
                                      "typically).")] = Path("."),  # fmt: skip
    concurrency: Annotated[int, typer.Option("--concurrency", "-n", min=1, metavar="N",
                                             help="Builds at once on this host.")] = 1,  # fmt: skip
    crawl_every: Annotated[str | None, typer.Option("--crawl-every", metavar="PERIOD",
                                                    help="Also crawl every PERIOD (15m .. 12h, 1d), once per "
                                                    "period however many workers run.")] = None,  # fmt: skip
    db: DbOption = None,
) -> None:
    """Run queued builds on this host until stopped (Ctrl-C or SIGTERM let the running build finish first).

    Downloads go to this host's cache, outputs to --out, each recorded in the shared registry with this host's
    name. A worker that dies (SIGKILL, power) loses nothing: its job is queued again once its heartbeats stop
    (within two minutes), on any worker, and resumes its downloads where they are. A build that keeps failing
    stops after 3 attempts; `inpaint-advisor jobs` shows its error.

    \b
    Examples:
      INPAINT_ADVISOR_DB=postgresql+psycopg://team@db/registry \\
          inpaint-advisor worker --out /mnt/models
      inpaint-advisor worker --concurrency 2 --crawl-every 6h --out /mnt/models
    """  # noqa: D301
    from advisor import team
    from crawler.registry.queue import cron_for

    if crawl_every is not None:
        try:
            cron_for(crawl_every)
        except ValueError as exc:
            raise die(str(exc), code="usage", exit_code=2) from None
    try:
        team.work(db=db, out=out, concurrency=concurrency, crawl_every=crawl_every)
    except Exception as exc:
        raise team_failure(exc, False) from None


JobId = Annotated[int, typer.Argument(metavar="ID", help="A job's id, as `inpaint-advisor jobs` lists it.")]
jobs_app = typer.Typer(invoke_without_command=True, subcommand_metavar=f"[{SUBCOMMAND}]",
                       context_settings={"help_option_names": ["-h", "--help"]})  # fmt: skip
app.add_typer(jobs_app, name="jobs")


@jobs_app.callback()
def jobs(
    ctx: typer.Context,
    status: Annotated[str | None, typer.Option(
        "--status", metavar="STATUS", help="Only todo, doing, succeeded, failed, cancelled or aborted.")] = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """The team's build queue: every queued, running and finished job, with its worker and last error; retry
    or cancel one.

    \b
    Examples:
      inpaint-advisor jobs
      inpaint-advisor jobs --status failed --json
      inpaint-advisor jobs retry 42
      inpaint-advisor jobs cancel 42
    """  # noqa: D301
    if ctx.invoked_subcommand is not None:
        ctx.obj = {"db": db}
        return
    from advisor import render, team
    from advisor.output import out, print_json

    statuses = ("todo", "doing", "succeeded", "failed", "cancelled", "aborted")
    if status is not None and status not in statuses:
        raise die(f"--status must be one of {', '.join(statuses)} (got {status!r})", code="usage", exit_code=2,
                  as_json=as_json)  # fmt: skip
    try:
        found = team.jobs(db=db, status=status)
    except Exception as exc:
        raise team_failure(exc, as_json) from None
    if as_json:
        print_json({"jobs": found})
    else:
        render.jobs_table(out, found)


@jobs_app.command(cls=PlainCommand)
def retry(ctx: typer.Context, job_id: JobId, db: DbOption = None, as_json: JsonOption = False) -> None:
    """Queue a failed job again now.

    \b
    Examples:
      inpaint-advisor jobs retry 42
    """  # noqa: D301
    from advisor import team
    from advisor.output import err, print_json

    try:
        team.retry(job_id, db=db or (ctx.obj or {}).get("db"))
    except Exception as exc:
        raise team_failure(exc, as_json) from None
    if as_json:
        print_json({"retried": job_id})
    else:
        err.print(f"job {job_id} queued again")


@jobs_app.command(cls=PlainCommand)
def cancel(ctx: typer.Context, job_id: JobId, db: DbOption = None, as_json: JsonOption = False) -> None:
    """Remove a queued job, or ask a running one to stop.

    \b
    Examples:
      inpaint-advisor jobs cancel 42
    """  # noqa: D301
    from advisor import team
    from advisor.output import err, print_json

    try:
        found = team.cancel(job_id, db=db or (ctx.obj or {}).get("db"))
    except Exception as exc:
        raise team_failure(exc, as_json) from None
    if not found:
        raise die(f"no queued or running job {job_id}", code="not-found", as_json=as_json)
    if as_json:
        print_json({"cancelled": job_id})
    else:
        err.print(f"job {job_id} cancelled")
