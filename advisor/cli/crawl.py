"""`crawl civitai` and `crawl hf`: fill the registry, resumably."""

from typing import Annotated

import typer

from advisor.cli.app import PlainCommand, crawl_app
from advisor.cli.common import DbOption, JsonOption, die, die_for, http_url

IncrementalOption = Annotated[
    bool, typer.Option("--incremental/--full", help="Only what changed since the last successful crawl.")
]
MaxPagesOption = Annotated[int | None, typer.Option("--max-pages", min=1, metavar="N",
                                                    help="Stop after N pages (resumable later).")]  # fmt: skip
RetriesOption = Annotated[int, typer.Option("--retries", min=1, metavar="N",
                                             help="Attempts per request before giving up.")]  # fmt: skip
BackoffOption = Annotated[float, typer.Option("--backoff", min=0.0, metavar="SECONDS",
                                              help="First retry delay (doubles each time, at most 30 s).")]  # fmt: skip


@crawl_app.command("civitai", cls=PlainCommand)
def crawl_civitai(
    incremental: IncrementalOption = False,
    max_pages: MaxPagesOption = None,
    url: Annotated[
        str | None,
        typer.Option("--url", envvar="INPAINT_ADVISOR_CIVITAI_URL", show_default="https://civitai.com", metavar="URL",
                     callback=http_url, help="Civitai base URL (a mirror or a local replay)."),
    ] = None,
    retries: RetriesOption = 6,
    backoff: BackoffOption = 1.0,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Pull every Checkpoint model from Civitai, with its versions and files, into the registry.

    Resumable: a crawl that was killed or failed continues from its last committed page. The API key comes
    from CIVITAI_API_TOKEN and is never logged or stored.

    \b
    Examples:
      inpaint-advisor crawl civitai                 # everything, or resume
      inpaint-advisor crawl civitai --incremental   # only what changed
      inpaint-advisor crawl civitai --max-pages 50  # a slice; run again to go on

    Exit status: 0 done (or stopped at --max-pages), 1 failed or another crawl is running (run again to
    resume), 2 usage or registry error, 130 interrupted.
    """  # noqa: D301
    from crawler import civitai
    from crawler.http import RetryPolicy

    def describe(s) -> str:
        return (f"civitai: {s.pages:,} pages, {s.models:,} models, {s.new_inpainting:,} new inpainting, "
                f"{s.retries} retries")  # fmt: skip

    _run_crawl(
        lambda reg, on_page, on_retry: civitai.crawl(
            reg, mode="incremental" if incremental else "full", base_url=url, max_pages=max_pages,
            on_page=on_page, on_retry=on_retry, policy=RetryPolicy(attempts=retries, base_delay=backoff),
        ),
        db, as_json, "crawling civitai", describe, "crawl_summary",
    )  # fmt: skip


@crawl_app.command("hf", cls=PlainCommand)
def crawl_hf(
    incremental: IncrementalOption = False,
    max_pages: MaxPagesOption = None,
    hf_endpoint: Annotated[
        str | None,
        typer.Option("--hf-endpoint", envvar="HF_ENDPOINT", show_default="https://huggingface.co", metavar="URL",
                     callback=http_url, help="Hub endpoint (a mirror or a local replay)."),
    ] = None,
    officials: Annotated[
        bool, typer.Option("--officials/--no-officials", help="Check the official checkpoints' mirrors too.")
    ] = True,
    retries: RetriesOption = 6,
    backoff: BackoffOption = 1.0,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Pull Hugging Face repos descending from the known bases: lineage, family, and whether each is an
    inpainting model (proven from unet/config.json or the safetensors header; tags are hints only).

    Also checks that every official inpainting and base checkpoint in the bundled data is still there, with
    the expected size and sha256; `lookup` then recommends a live mirror. The token comes from HF_TOKEN and is
    never logged or stored. Resumable like the Civitai crawl.

    \b
    Examples:
      inpaint-advisor crawl hf
      inpaint-advisor crawl hf --incremental
      HF_TOKEN=hf_... inpaint-advisor crawl hf --hf-endpoint https://hf.example
    """  # noqa: D301
    from crawler import hf
    from crawler.http import RetryPolicy

    def describe(s) -> str:
        return (f"hf: {s.pages:,} pages, {s.listed:,} repos listed, {s.inspected:,} inspected, "
                f"{s.new_inpainting:,} new inpainting, {s.retries} retries")  # fmt: skip

    _run_crawl(
        lambda reg, on_page, on_retry: hf.crawl(
            reg, mode="incremental" if incremental else "full", endpoint=hf_endpoint, max_pages=max_pages,
            check_officials=officials, on_page=on_page, on_retry=on_retry,
            policy=RetryPolicy(attempts=retries, base_delay=backoff),
        ),
        db, as_json, "crawling the Hugging Face Hub", describe, "hf_crawl_summary",
    )  # fmt: skip


@crawl_app.command("all", cls=PlainCommand)
def crawl_all(
    incremental: IncrementalOption = False,
    retries: RetriesOption = 6,
    backoff: BackoffOption = 1.0,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Crawl every source in turn (Civitai, then the Hugging Face Hub with its official-checkpoint checks) and
    print one summary: what a timer runs. One source failing does not stop the next. URLs and tokens come
    from the environment (INPAINT_ADVISOR_CIVITAI_URL, CIVITAI_API_TOKEN, HF_ENDPOINT, HF_TOKEN).

    \b
    Examples:
      inpaint-advisor crawl all --incremental
      inpaint-advisor crawl all --json

    Exit status: 0 every source done, 1 one failed or was being crawled already (run again to resume), 2
    usage or registry error, 130 interrupted.
    """  # noqa: D301

    from crawler.crawl_all import crawl_all as run_all
    from crawler.http import RetryPolicy

    def describe(s) -> str:
        return f"crawl all ({'incremental' if incremental else 'full'})"

    summary = _run_crawl(
        lambda reg, on_page, on_retry: run_all(
            reg, incremental=incremental, on_retry=on_retry,  # the sites the settings name
            on_page=lambda source, s: on_page(s), policy=RetryPolicy(attempts=retries, base_delay=backoff),
        ),
        db, as_json, "crawling every source", describe, "crawl_all_summary",
    )  # fmt: skip
    if not summary.ok:
        raise typer.Exit(1)


def _run_crawl(crawl, db, as_json: bool, title: str, describe, renderer: str):
    """Progress, retry notices, the summary, and the errors every crawl command shares."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from advisor.cli import render
    from advisor.cli.output import err, out, print_json
    from crawler import registry
    from crawler.http import CrawlError
    from crawler.registry import CrawlLocked

    try:
        reg = registry.open(db)
    except registry.RegistryError as exc:
        raise die_for(exc, as_json=as_json) from None
    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err,
                        disable=as_json or not err.is_terminal)  # fmt: skip
    task = progress.add_task(title)

    def on_retry(msg: str) -> None:
        if not as_json:
            err.print(render.line(("retry: ", "yellow"), msg))

    try:
        with progress:
            summary = crawl(reg, lambda s: progress.update(task, description=describe(s)), on_retry)
    except CrawlLocked as exc:
        raise die_for(exc, as_json=as_json) from None
    except (CrawlError, ValueError) as exc:
        raise die(f"{exc}. The crawl stopped; run the same command again to resume from the last saved page.",
                  code="crawl-failed", as_json=as_json) from None  # fmt: skip
    except KeyboardInterrupt:
        raise die("interrupted; run the same command again to resume.", code="interrupted", exit_code=130,
                  as_json=as_json) from None  # fmt: skip
    except Exception as exc:
        error = registry.describe_error(exc, db)  # the database failed under the crawl (a server gone, ...)
        if error is None:
            raise
        raise die_for(error, as_json=as_json) from None
    if as_json:
        print_json(summary)
    else:
        getattr(render, renderer)(out, summary)
    return summary
