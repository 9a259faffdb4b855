"""`schedule install|show|remove|run`: crawls on a timer (systemd user timer, else crontab)."""

from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer

from advisor.cli.app import SUBCOMMAND, PlainCommand, PlainGroup, app
from advisor.cli.common import DbOption, JsonOption, die, die_for, duration
from advisor.cli.output import USAGE
from data import settings

schedule_app = typer.Typer(cls=PlainGroup, help="Crawl every source on a timer (systemd user timer, else crontab).",
                           no_args_is_help=True, subcommand_metavar=SUBCOMMAND,
                           context_settings={"help_option_names": ["-h", "--help"]})  # fmt: skip
app.add_typer(schedule_app, name="schedule")

BackendOption = Annotated[str, typer.Option(
    "--backend", metavar="auto|systemd|cron",
    help="Where the schedule lives (auto: systemd if it runs here).")]  # fmt: skip


@schedule_app.command(cls=PlainCommand)
def install(
    every: Annotated[timedelta, typer.Option("--every", parser=duration, metavar="DURATION",
                                             help="Incremental crawl period.")] = "6h",  # type: ignore[assignment]  # fmt: skip
    full_every: Annotated[timedelta, typer.Option("--full-every", parser=duration, metavar="DURATION",
                                                  help="Full crawl period.")] = "7d",  # type: ignore[assignment]  # fmt: skip
    # (typer passes a default through parser=duration, as it does the option's text)
    backend: BackendOption = "auto",
    as_json: JsonOption = False,
) -> None:
    """Run `crawl all --incremental` every --every and a full `crawl all` every --full-every (on the
    calendar), one at a time (`schedule run`), with this shell's registry and endpoints
    (INPAINT_ADVISOR_DB, INPAINT_ADVISOR_CIVITAI_URL, HF_ENDPOINT, ...). Installing again replaces the
    schedule; a failed install leaves nothing behind. Tokens are read from
    ~/.config/inpaint-advisor/crawl.env (created private) at each run, never written into the schedule.

    \b
    Examples:
      inpaint-advisor schedule install
      inpaint-advisor schedule install --every 3h --full-every 1d --backend cron
    """  # noqa: D301
    from advisor.cli import render
    from advisor.cli.output import out, print_json
    from advisor.team import schedules as schedule

    if backend not in ("auto", "systemd", "cron"):
        raise die(f"unknown backend {backend!r}: auto, systemd or cron", code="usage", exit_code=USAGE, as_json=as_json)
    try:
        done = schedule.install(every, full_every, backend)
    except schedule.ScheduleError as exc:
        raise die_for(exc, as_json=as_json) from None
    if as_json:
        print_json(done)
    else:
        render.schedule_installed(out, done)


@schedule_app.command(cls=PlainCommand)
def show(backend: BackendOption = "auto", db: DbOption = None, as_json: JsonOption = False) -> None:
    """Show the installed schedule, its next runs, and each source's last crawl.

    \b
    Examples:
      inpaint-advisor schedule show --json
    """  # noqa: D301
    from advisor.cli import render
    from advisor.cli.output import out, print_json
    from advisor.team import schedules as schedule
    from crawler import registry

    try:
        shown = schedule.show(backend)
    except schedule.ScheduleError as exc:
        raise die_for(exc, as_json=as_json) from None
    try:
        last = registry.open(db, "read").source_runs()
    except Exception:  # noqa: BLE001 - no registry (yet): the schedule is still worth showing
        last = []
    if as_json:
        print_json({**shown.__dict__, "last": last})
    else:
        render.schedule_shown(out, shown, last)


@schedule_app.command(cls=PlainCommand)
def remove(backend: BackendOption = "auto", as_json: JsonOption = False) -> None:
    """Remove the schedule an install wrote (nothing else in your crontab or units is touched).

    \b
    Examples:
      inpaint-advisor schedule remove
      inpaint-advisor schedule remove --backend cron --json
    """  # noqa: D301
    from advisor.cli import render
    from advisor.cli.output import out, print_json
    from advisor.team import schedules as schedule

    try:
        done = schedule.remove(backend)
    except schedule.ScheduleError as exc:
        raise die_for(exc, as_json=as_json) from None
    if as_json:
        print_json(done)
    else:
        render.schedule_removed(out, done)


@schedule_app.command(cls=PlainCommand)
def run(
    incremental: Annotated[bool, typer.Option("--incremental/--full",
                                              help="Only what changed since the last successful crawl.")] = False,
    env_file: Annotated[Path | None, typer.Option(
        "--env-file", metavar="PATH", dir_okay=False,
        help="KEY=VALUE lines (tokens) to crawl with, read as data [default: "
             "~/.config/inpaint-advisor/crawl.env].")] = None,
    as_json: JsonOption = False,
) -> None:
    """What an installed schedule runs: `crawl all`, with the settings in --env-file read as data (never
    run by a shell), one scheduled crawl at a time: a full crawl waits for the one running, an incremental
    one gives way to it (exit 0: the full crawl reads everything it would).

    \b
    Examples:
      inpaint-advisor schedule run --incremental
      inpaint-advisor schedule run --full --env-file ~/crawl.env --json

    Exit status: those of `crawl all`; 2 for an --env-file line that is not KEY=VALUE.
    """  # noqa: D301
    import os

    from advisor.cli.crawl import crawl_all
    from advisor.cli.output import err, print_json
    from advisor.team import schedules as schedule

    path = env_file or schedule.env_file()
    try:
        values = schedule.read_env_file(path)
    except schedule.ScheduleError as exc:
        raise die_for(exc, as_json=as_json) from None
    if not path.exists():
        err.print(f"note: no {path}: crawling without tokens", markup=False, highlight=False)
    settings.apply(values)
    try:
        turn = schedule.take_turn(full=not incremental)
    except schedule.ScheduleError as exc:
        raise die_for(exc, as_json=as_json) from None
    if turn is None:
        why = "another scheduled crawl is running: this incremental one gives way to it"
        if as_json:
            print_json({"skipped": why})
        else:
            err.print(f"skipped: {why}", markup=False, highlight=False)
        return
    try:
        crawl_all(incremental=incremental, retries=6, backoff=1.0, db=None, as_json=as_json)
    finally:
        os.close(turn)
