"""`cache list|clear`: what builds keep in the cache (prepared pairs, fetched files), and freeing it."""

from typing import Annotated

import typer

from advisor.cli.app import SUBCOMMAND, PlainCommand, PlainGroup, app
from advisor.cli.common import JsonOption, die

cache_app = typer.Typer(help="What builds keep in the cache: prepared pairs and fetched files.", no_args_is_help=True,
                        cls=PlainGroup, subcommand_metavar=SUBCOMMAND,
                        context_settings={"help_option_names": ["-h", "--help"]})  # fmt: skip
app.add_typer(cache_app, name="cache")


@cache_app.command("list", cls=PlainCommand)
def list_(as_json: JsonOption = False) -> None:
    """List the prepared pairs (a family's A - M*C, made once so that later builds read two inputs, not three)
    and the fetched files (official A and C, fine-tunes), with their sizes, and the partial files of
    interrupted downloads, preparations and merges, with whether their owner still runs. The cache is
    $INPAINT_ADVISOR_CACHE, else the user cache folder.

    \b
    Examples:
      inpaint-advisor cache list
      inpaint-advisor cache list --json
    """  # noqa: D301
    from advisor.build import cache
    from advisor.cli import render
    from advisor.cli.output import out, print_json

    report = cache.report()
    if as_json:
        print_json(report)
    else:
        render.cache_report(out, report)


@cache_app.command(cls=PlainCommand)
def clear(
    what: Annotated[str, typer.Argument(metavar="all|prepared|files|partial", help="What to remove.")] = "all",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would be removed, remove nothing.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Remove prepared pairs, fetched files, or both (the default); `partial` removes only the partial files
    whose owner is gone (interrupted downloads, unfinished pairs, hidden files of killed merges). What a
    running build holds is left alone and named. The next build fetches again what it needs (and prepares the
    pair again only when asked to, `build --prepare-pair`).

    \b
    Examples:
      inpaint-advisor cache clear prepared
      inpaint-advisor cache clear partial
      inpaint-advisor cache clear --dry-run
    """  # noqa: D301
    from advisor.build import cache
    from advisor.cli import render
    from advisor.cli.output import USAGE, out, print_json

    if what not in cache.WHAT:
        raise die(f"what to clear must be one of {', '.join(cache.WHAT)} (got {what!r})", code="usage",
                  exit_code=USAGE, as_json=as_json)  # fmt: skip
    done = cache.clear(what, dry_run=dry_run)
    if as_json:
        print_json(done)
    else:
        render.cache_cleared(out, done)
    if done.busy:
        raise typer.Exit(1)
