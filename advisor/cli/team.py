"""Team mode: `worker` runs queued builds on this host; `jobs` lists, shows, retries and cancels them. The queue
is in the PostgreSQL registry (procrastinate); `build --enqueue` fills it."""

from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from advisor.cli.app import SUBCOMMAND, PlainCommand, PlainGroup, app
from advisor.cli.common import DbOption, JsonOption, die, die_for

SQLITE_HINT = ("; on one machine, `inpaint-advisor scan --build` and `build --missing` run the same builds in the "
               "foreground")  # fmt: skip


def team_failure(exc: BaseException, as_json: bool, alone: str | None = None) -> typer.Exit:
    """A queue error as one line; a SQLite registry is told what to use instead (``alone``: what does the
    same work on one machine, where it is not a build)."""
    from crawler.registry import TeamModeNeedsPostgres

    if isinstance(exc, TeamModeNeedsPostgres):
        hint = (f"; on one machine, {alone}" if alone else SQLITE_HINT) if "SQLite" in str(exc) else ""
        return die(f"{exc}{hint}", code=exc.code, exit_code=exc.exit_code, as_json=as_json)  # with its advice
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
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Also log the queue's own lines, and a "
                                          "traceback for each failure.")] = False,  # fmt: skip
    db: DbOption = None,
) -> None:
    """Run queued builds on this host until stopped (Ctrl-C or SIGTERM let the running build finish first).

    Prints one line per job on stderr: its start, its end (the output, or the error's code and reason).
    Downloads go to this host's cache, outputs to --out, each recorded in the shared registry with this host's
    name. A worker that dies (SIGKILL, power) loses nothing: its job is queued again once its heartbeats stop
    (within two minutes), on any worker, and resumes its downloads where they are. A build that fails for
    good (not found, a login wall, ...) fails at once; one that meets a network or disk error runs again
    after a wait, 3 attempts in all. `inpaint-advisor jobs` shows the errors.

    \b
    Examples:
      INPAINT_ADVISOR_DB=postgresql+psycopg://team@db/registry \\
          inpaint-advisor worker --out /mnt/models
      inpaint-advisor worker --concurrency 2 --crawl-every 6h --out /mnt/models
    """  # noqa: D301
    from advisor.team import worker as team
    from advisor.team.runtime import cron_for

    if crawl_every is not None:
        try:
            cron_for(crawl_every)
        except ValueError as exc:
            raise die(str(exc), code="usage", exit_code=2) from None
    try:
        team.work(db=db, out=out, concurrency=concurrency, crawl_every=crawl_every, verbose=verbose)
    except Exception as exc:
        raise team_failure(exc, False) from None


JobId = Annotated[int, typer.Argument(metavar="ID", help="A job's id, as `inpaint-advisor jobs` lists it.")]
jobs_app = typer.Typer(cls=PlainGroup, invoke_without_command=True, subcommand_metavar=f"[{SUBCOMMAND}]",
                       context_settings={"help_option_names": ["-h", "--help"]})  # fmt: skip
app.add_typer(jobs_app, name="jobs")


# -- how jobs read ----------------------------------------------------------------------------------------------


def _one_line(text: object) -> str:
    from advisor.safety import terminal_text

    return " ".join(terminal_text(text).split())


def _what(j) -> str:
    if j.task == "build":
        return str(j.args.get("query") or "")
    if j.task == "crawl" and "timestamp" in j.args:
        return f"crawl (tick {datetime.fromtimestamp(j.args['timestamp']):%Y-%m-%d %H:%M})"
    return j.task


def _detail(j) -> str:
    """The one thing to know about a job in a listing: where it runs, why it failed, when it runs again."""
    if j.status == "doing":
        return f"on {j.worker}" if j.worker else ""
    if j.status == "todo":
        later = j.scheduled_at is not None and j.scheduled_at > datetime.now(j.scheduled_at.tzinfo)
        when = f"again at {j.scheduled_at.astimezone():%H:%M:%S}" if later else ("again" if j.error else "")
        return "; ".join(p for p in (when, j.error or "") if p)
    if j.status in ("failed", "aborted"):
        return j.error or ""
    if j.status == "succeeded":
        return f"by {j.worker}" if j.worker else ""
    return ""


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def jobs_table(console: Console, jobs) -> None:
    """One line per job, however wide the terminal: the error (or worker) cut to fit, whole in `jobs show`."""
    from rich.table import Table
    from rich.text import Text

    if not jobs:
        console.print(Text("no jobs (queue builds with `inpaint-advisor build MODEL --enqueue`)", style="dim"))
        return
    rows = [(str(j.id), j.status, str(j.attempts), _one_line(_what(j)), _one_line(_detail(j))) for j in jobs]
    heads = ("id", "status", "runs", "what", "error or worker")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(heads)]
    gaps = 2 * (len(heads) - 1)
    room = max(console.width - sum(widths[:3]) - gaps, 24)  # what and detail share the rest
    widths[3] = min(widths[3], max(room // 2, room - widths[4], 12))
    widths[4] = max(room - widths[3], 8)
    table = Table(box=None, padding=(0, 1), pad_edge=False)
    for i, head in enumerate(heads):
        table.add_column(_cut(head, widths[i]), no_wrap=True, justify="right" if i in (0, 2) else "left",
                         width=widths[i] if i >= 3 else None)  # fmt: skip
    color = {"succeeded": "green", "failed": "red", "doing": "yellow", "cancelled": "dim", "aborted": "red"}
    for (jid, status, runs, what, detail), j in zip(rows, jobs, strict=True):
        table.add_row(jid, Text(status, style=color.get(status, "")), runs, Text(_cut(what, widths[3])),
                      Text(_cut(detail, widths[4]), style="red" if j.status == "failed" else ""))  # fmt: skip
    console.print(table)


_EVENTS = {"deferred": "queued", "deferred_for_retry": "failed, to run again", "scheduled": "to run again (scheduled)",
           "abort_requested": "asked to stop", "aborted": "stopped", "retried": "queued again"}  # fmt: skip


def job_details(console: Console, j) -> None:
    """Everything about one job, the error whole."""
    from rich.table import Table

    from advisor.cli.render import line, t

    runs = f"{j.attempts} run" + ("s" if j.attempts != 1 else "")
    console.print(line((f"job {j.id}", "bold"), f": {j.task}, {j.status} ({runs} ended)"))
    fields = []
    if j.task == "build":
        fields.append(("builds", str(j.args.get("query") or "")))
        if j.args.get("name"):
            fields.append(("model", j.args["name"]))
        if j.args.get("asked") and j.args["asked"] != j.args.get("query"):
            fields.append(("asked as", j.args["asked"]))
        recipe = [f"M {j.args.get('multiplier', 1.0):g}", str(j.args.get("dtype", "fp16"))]
        if j.args.get("inpaint") or j.args.get("base"):
            recipe.append(f"A {j.args.get('inpaint') or 'official'}, C {j.args.get('base') or 'official'}")
        else:
            recipe.append("the family's official A and C")
        if j.args.get("force_build"):
            recipe.append("--force-build")
        fields.append(("recipe", ", ".join(recipe)))
    else:
        fields.append(("what", _what(j)))
    if j.worker:
        fields.append(("worker", j.worker))
    if j.status == "todo" and j.scheduled_at is not None:
        fields.append(("runs at", f"{j.scheduled_at.astimezone():%Y-%m-%d %H:%M:%S %Z}"))
    if j.error:
        fields.append(("error", j.error))
    for e in j.events or []:
        at = f"{e.at.astimezone():%Y-%m-%d %H:%M:%S}" if e.at else "?"
        fields.append(("history" if e is j.events[0] else "", f"{at}  {_EVENTS.get(e.type, e.type.replace('_', ' '))}"))
    grid = Table.grid(padding=(0, 1))
    grid.add_column(style="dim", no_wrap=True)
    grid.add_column(overflow="fold")
    for label, value in fields:
        grid.add_row(f"  {label + ':' if label else ''}", t(value))
    console.print(grid)


def queued(console: Console, items) -> None:
    """`build --enqueue`: each query, the job it became and what that job builds."""
    from advisor.cli.render import line

    for q in items:
        state = f"job {q.job_id}"
        if q.already:
            state = f"already queued (job {q.job_id})" if q.job_id else "already queued"
        console.print(line((f"{state}: ", "bold"), q.query, " → ", q.target, (f" ({q.name})", "dim")))
    if not items:
        console.print(line(("nothing to queue", "dim")))


# -- the commands -----------------------------------------------------------------------------------------------


@jobs_app.callback()
def jobs(
    ctx: typer.Context,
    status: Annotated[str | None, typer.Option(
        "--status", metavar="STATUS", help="Only todo, doing, succeeded, failed, cancelled or aborted.")] = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """The team's build queue: every queued, running and finished job, one line each with its worker or its
    error (shortened: `jobs show ID` has it whole); show, retry or cancel one.

    \b
    Examples:
      inpaint-advisor jobs
      inpaint-advisor jobs --status failed --json
      inpaint-advisor jobs show 42
      inpaint-advisor jobs retry 42
      inpaint-advisor jobs cancel 42
    """  # noqa: D301
    if ctx.invoked_subcommand is not None:
        ctx.obj = {"db": db}
        return
    from advisor.cli.output import out, print_json
    from advisor.team import worker as team

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
        jobs_table(out, found)


@jobs_app.command(cls=PlainCommand)
def show(ctx: typer.Context, job_id: JobId, db: DbOption = None, as_json: JsonOption = False) -> None:
    """Everything about one job: what it builds, its recipe, its worker, its whole last error and its history.

    \b
    Examples:
      inpaint-advisor jobs show 42
    """  # noqa: D301
    from advisor.cli.output import out, print_json
    from advisor.team import worker as team

    try:
        found = team.show(job_id, db=db or (ctx.obj or {}).get("db"))
    except Exception as exc:
        raise team_failure(exc, as_json) from None
    if as_json:
        print_json(found)
    else:
        job_details(out, found)


@jobs_app.command(cls=PlainCommand)
def retry(ctx: typer.Context, job_id: JobId, db: DbOption = None, as_json: JsonOption = False) -> None:
    """Queue a failed job again now (or a running one whose worker went silent).

    \b
    Examples:
      inpaint-advisor jobs retry 42
    """  # noqa: D301
    from advisor.cli.output import err, print_json
    from advisor.team import worker as team

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
    from advisor.cli.output import err, print_json
    from advisor.team import worker as team

    try:
        done = team.cancel(job_id, db=db or (ctx.obj or {}).get("db"))
    except Exception as exc:
        raise team_failure(exc, as_json) from None
    if as_json:
        print_json({"cancelled": job_id})
    else:
        err.print(f"job {job_id} cancelled" if done == "cancelled" else f"job {job_id} asked to stop (it is running)")
