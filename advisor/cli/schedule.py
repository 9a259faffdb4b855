"""`schedule install|show|remove`: crawls on a timer (systemd user timer, else crontab)."""

from datetime import timedelta
from typing import Annotated

import typer

from advisor.cli.app import SUBCOMMAND, PlainCommand, app
from advisor.cli.common import DbOption, JsonOption, die, duration

schedule_app = typer.Typer(help="Crawl every source on a timer (systemd user timer, else crontab).",
                           no_args_is_help=True, subcommand_metavar=SUBCOMMAND,
                           context_settings={"help_option_names": ["-h", "--help"]})  # fmt: skip
app.add_typer(schedule_app, name="schedule")

BackendOption = Annotated[str, typer.Option(
    "--backend", metavar="auto|systemd|cron",
    help="Where the schedule lives (auto: systemd if it runs here).")]  # fmt: skip


def _fail(exc, as_json: bool) -> typer.Exit:
    from advisor.output import USAGE

    return die(str(exc), code=exc.code, exit_code=USAGE if exc.code == "usage" else 1, as_json=as_json)


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
    """Run `crawl all --incremental` every --every and a full `crawl all` every --full-every, with this
    shell's registry and endpoints (INPAINT_ADVISOR_DB, INPAINT_ADVISOR_CIVITAI_URL, HF_ENDPOINT, ...).
    Installing again replaces the schedule. Tokens are read from ~/.config/inpaint-advisor/crawl.env at
    each run, never written into the schedule.

    \b
    Examples:
      inpaint-advisor schedule install
      inpaint-advisor schedule install --every 3h --full-every 1d --backend cron
    """  # noqa: D301
    from advisor import render, schedule
    from advisor.output import out, print_json

    if backend not in ("auto", "systemd", "cron"):
        raise _fail(schedule.ScheduleError(f"unknown backend {backend!r}: auto, systemd or cron", "usage"), as_json)
    try:
        done = schedule.install(every, full_every, backend)
    except schedule.ScheduleError as exc:
        raise _fail(exc, as_json) from None
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
    from advisor import render, schedule
    from advisor.output import out, print_json
    from crawler import registry
    from crawler.registry.stats import source_runs

    try:
        shown = schedule.show(backend)
    except schedule.ScheduleError as exc:
        raise _fail(exc, as_json) from None
    try:
        last = source_runs(registry.connect_read_only(db))
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
    from advisor import render, schedule
    from advisor.output import out, print_json

    try:
        done = schedule.remove(backend)
    except schedule.ScheduleError as exc:
        raise _fail(exc, as_json) from None
    if as_json:
        print_json(done)
    else:
        render.schedule_removed(out, done)
