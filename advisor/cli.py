"""`inpaint-advisor`: a thin typer layer over the library functions in crawler/, advisor/ and merge/."""

from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(
    name="inpaint-advisor",
    help="Find the right inpainting checkpoint for a Stable Diffusion fine-tune, or build one.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)
crawl_app = typer.Typer(help="Fill the registry from a model hub.", no_args_is_help=True)
app.add_typer(crawl_app, name="crawl")

out = Console()
err = Console(stderr=True)

DbOption = Annotated[
    str | None,
    typer.Option(
        "--db",
        envvar="INPAINT_ADVISOR_DB",
        help="Registry: a SQLite path or an SQLAlchemy URL.",
        show_default="the user data dir",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of tables.")]


def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[red]error:[/] {message}")
    return typer.Exit(code)


@crawl_app.command("civitai")
def crawl_civitai(
    incremental: Annotated[
        bool, typer.Option("--incremental/--full", help="Only models changed since the last successful crawl.")
    ] = False,
    max_pages: Annotated[int | None, typer.Option(min=1, help="Stop after N pages (resumable later).")] = None,
    url: Annotated[
        str | None,
        typer.Option(
            envvar="INPAINT_ADVISOR_CIVITAI_URL",
            show_default="https://civitai.com",
            help="Civitai base URL (a mirror or a local replay).",
        ),
    ] = None,
    retries: Annotated[int, typer.Option(min=1, help="Attempts per request before giving up.")] = 6,
    backoff: Annotated[float, typer.Option(min=0.0, help="First retry delay in seconds (doubles, max 30 s).")] = 1.0,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Pull every Checkpoint model from Civitai, with its versions and files, into the registry.

    Resumable: a crawl that was killed or failed continues from its last committed page. The API key comes
    from CIVITAI_API_TOKEN and is never logged or stored.

    Example: [bold]inpaint-advisor crawl civitai --incremental[/]
    """
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from advisor import jsonout, render
    from crawler import civitai
    from crawler import db as registry
    from crawler.http import CrawlError, RetryPolicy
    from crawler.runs import CrawlLocked

    engine = registry.get_engine(db)
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=err,
        disable=as_json or not err.is_terminal,
    )
    task = progress.add_task("crawling civitai")

    def on_page(s: civitai.CrawlSummary) -> None:
        progress.update(
            task,
            description=f"civitai: {s.pages:,} pages, {s.models:,} models, "
            f"{s.new_inpainting:,} new inpainting, {s.retries} retries",
        )

    def on_retry(msg: str) -> None:
        if not as_json:
            err.print(f"[yellow]retry:[/] {msg}")

    mode = "incremental" if incremental else "full"
    try:
        with progress:
            summary = civitai.crawl(
                engine,
                mode=mode,
                base_url=url,
                max_pages=max_pages,
                on_page=on_page,
                on_retry=on_retry,
                policy=RetryPolicy(attempts=retries, base_delay=backoff),
            )
    except CrawlLocked as exc:
        raise _fail(str(exc)) from None
    except (CrawlError, ValueError) as exc:
        raise _fail(
            f"{exc}\nThe crawl stopped; run the same command again to resume from the last saved page."
        ) from None
    except KeyboardInterrupt:
        raise _fail("interrupted; run the same command again to resume.", 130) from None
    if as_json:
        out.print_json(jsonout.dumps(summary))
    else:
        render.crawl_summary(out, summary)


@app.command()
def status(db: DbOption = None, as_json: JsonOption = False) -> None:
    """Show what the registry holds: models per family, inpainting coverage, unknown base models, crawls.

    Example: [bold]inpaint-advisor status[/]
    """
    from advisor import jsonout, render
    from crawler import db as registry
    from crawler.stats import registry_status

    st = registry_status(registry.get_engine(db))
    if as_json:
        out.print_json(jsonout.dumps(st))
    else:
        render.registry_status(out, st)


def main() -> None:
    app()
