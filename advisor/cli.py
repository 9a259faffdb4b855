"""`inpaint-advisor`: a thin typer layer over the library functions in crawler/, advisor/ and merge/."""

import inspect
import os
import sys
from pathlib import Path
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

out_console = Console()
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
IncrementalOption = Annotated[
    bool, typer.Option("--incremental/--full", help="Only what changed since the last successful crawl.")
]
MaxPagesOption = Annotated[int | None, typer.Option(min=1, help="Stop after N pages (resumable later).")]
RetriesOption = Annotated[int, typer.Option(min=1, help="Attempts per request before giving up.")]
BackoffOption = Annotated[float, typer.Option(min=0.0, help="First retry delay in seconds (doubles, max 30 s).")]


def _fail(message: str, code: int = 1) -> typer.Exit:
    from rich.markup import escape

    err.print(f"[red]error:[/] {escape(message)}", soft_wrap=True)
    return typer.Exit(code)


@app.command()
def lookup(
    query: Annotated[str, typer.Argument(help="A name (typos welcome), Civitai URL/id/AIR, HF repo, hash or file.")],
    offline: Annotated[bool, typer.Option("--offline", help="Never go to the network.")] = False,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Which inpainting checkpoint should I use with this model?

    Answers, in order: it already is one; its own inpainting release; the creator's inpainting model; the
    official inpainting model of its family; or how to build one (the exact merge command).

    Examples:
      [bold]inpaint-advisor lookup "majicmix realistic v7"[/]
      [bold]inpaint-advisor lookup https://civitai.com/models/4384?modelVersionId=128713[/]
      [bold]inpaint-advisor lookup urn:air:sdxl:checkpoint:civitai:4201@130072[/]
      [bold]inpaint-advisor lookup Lykon/dreamshaper-8[/]  (a Hugging Face repo)
      [bold]inpaint-advisor lookup 7C819B6D13[/]  (an AutoV2 hash)
      [bold]inpaint-advisor lookup ./myModel.safetensors --json[/]

    Exit codes: 0 answered, 1 nothing matched (or several candidates), 2 usage error.
    """
    from advisor import jsonout, render
    from advisor.lookup import lookup as do_lookup
    from crawler.registry.errors import RegistryError

    try:
        result = do_lookup(query, db=db, offline=offline)
    except ValueError as exc:
        raise _fail(str(exc), 2) from None
    except RegistryError as exc:
        raise _fail(str(exc), exc.exit_code) from None
    if as_json:
        out_console.print_json(jsonout.dumps(result))
    else:
        render.lookup_result(out_console, result)
    raise typer.Exit(0 if result.answered else 1)


@app.command()
def probe(
    path: Annotated[Path, typer.Argument(help="A .safetensors file or a diffusers folder.")],
    with_hash: Annotated[bool, typer.Option("--hash", help="Add SHA256, AutoV2, AutoV3 (one streaming read).")] = False,
    as_json: JsonOption = False,
) -> None:
    """Family, variant, prediction type, precision and size of a checkpoint, from its header alone.

    Example: [bold]inpaint-advisor probe sd_xl_base_1.0.safetensors --json[/]
    """
    from advisor import jsonout, render
    from advisor.probe import probe as do_probe
    from merge.header import CheckpointError

    try:
        result = do_probe(path, with_hash=with_hash)
    except (CheckpointError, OSError) as exc:
        raise _fail(str(exc)) from None
    if as_json:
        out_console.print_json(jsonout.dumps(result))
    else:
        render.probe_result(out_console, result)


@crawl_app.command("civitai")
def crawl_civitai(
    incremental: IncrementalOption = False,
    max_pages: MaxPagesOption = None,
    url: Annotated[
        str | None,
        typer.Option(
            envvar="INPAINT_ADVISOR_CIVITAI_URL",
            show_default="https://civitai.com",
            help="Civitai base URL (a mirror or a local replay).",
        ),
    ] = None,
    retries: RetriesOption = 6,
    backoff: BackoffOption = 1.0,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Pull every Checkpoint model from Civitai, with its versions and files, into the registry.

    Resumable: a crawl that was killed or failed continues from its last committed page. The API key comes
    from CIVITAI_API_TOKEN and is never logged or stored.

    Example: [bold]inpaint-advisor crawl civitai --incremental[/]
    """
    from crawler import civitai
    from crawler.http import RetryPolicy

    def describe(s) -> str:
        return (f"civitai: {s.pages:,} pages, {s.models:,} models, {s.new_inpainting:,} new inpainting, "
                f"{s.retries} retries")  # fmt: skip

    _run_crawl(
        lambda engine, on_page, on_retry: civitai.crawl(
            engine, mode="incremental" if incremental else "full", base_url=url, max_pages=max_pages,
            on_page=on_page, on_retry=on_retry, policy=RetryPolicy(attempts=retries, base_delay=backoff),
        ),
        db, as_json, "crawling civitai", describe, "crawl_summary",
    )  # fmt: skip


@crawl_app.command("hf")
def crawl_hf(
    incremental: IncrementalOption = False,
    max_pages: MaxPagesOption = None,
    hf_endpoint: Annotated[
        str | None,
        typer.Option(
            "--hf-endpoint",
            envvar="HF_ENDPOINT",
            show_default="https://huggingface.co",
            help="Hub endpoint (a mirror or a local replay).",
        ),
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
    inpainting model (proven from unet/config.json or the safetensors header, tags are hints only).

    Also checks that every official inpainting and base checkpoint in the bundled data is still there, with
    the expected size and sha256; `lookup` then recommends a live mirror. The token comes from HF_TOKEN and is
    never logged or stored. Resumable like the Civitai crawl.

    Example: [bold]inpaint-advisor crawl hf --incremental[/]
    """  # fmt: skip
    from crawler import hf
    from crawler.http import RetryPolicy

    def describe(s) -> str:
        return (f"hf: {s.pages:,} pages, {s.listed:,} repos listed, {s.inspected:,} inspected, "
                f"{s.new_inpainting:,} new inpainting, {s.retries} retries")  # fmt: skip

    _run_crawl(
        lambda engine, on_page, on_retry: hf.crawl(
            engine, mode="incremental" if incremental else "full", endpoint=hf_endpoint, max_pages=max_pages,
            check_officials=officials, on_page=on_page, on_retry=on_retry,
            policy=RetryPolicy(attempts=retries, base_delay=backoff),
        ),
        db, as_json, "crawling the Hugging Face Hub", describe, "hf_crawl_summary",
    )  # fmt: skip


def _run_crawl(crawl, db, as_json: bool, title: str, describe, renderer: str) -> None:
    """Progress, retry notices, the summary, and the errors every crawl command shares."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from advisor import jsonout, render
    from crawler import registry
    from crawler.http import CrawlError
    from crawler.registry.runs import CrawlLocked

    try:
        engine = registry.connect(db)
    except registry.RegistryError as exc:
        raise _fail(str(exc), exc.exit_code) from None
    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err,
                        disable=as_json or not err.is_terminal)  # fmt: skip
    task = progress.add_task(title)

    def on_retry(msg: str) -> None:
        if not as_json:
            err.print(f"[yellow]retry:[/] {msg}")

    try:
        with progress:
            summary = crawl(engine, lambda s: progress.update(task, description=describe(s)), on_retry)
    except CrawlLocked as exc:
        raise _fail(str(exc)) from None
    except (CrawlError, ValueError) as exc:
        raise _fail(
            f"{exc}\nThe crawl stopped; run the same command again to resume from the last saved page."
        ) from None
    except KeyboardInterrupt:
        raise _fail("interrupted; run the same command again to resume.", 130) from None
    if as_json:
        out_console.print_json(jsonout.dumps(summary))
    else:
        getattr(render, renderer)(out_console, summary)


@app.command()
def status(db: DbOption = None, as_json: JsonOption = False) -> None:
    """Show what the registry holds: models per family, inpainting coverage, unknown base models, crawls.

    Example: [bold]inpaint-advisor status[/]
    """
    from advisor import jsonout, render
    from crawler import registry
    from crawler.registry.stats import registry_status

    try:
        st = registry_status(registry.connect_read_only(db))
    except registry.RegistryError as exc:
        raise _fail(str(exc), exc.exit_code) from None
    if as_json:
        out_console.print_json(jsonout.dumps(st))
    else:
        render.registry_status(out_console, st)


@app.command()
def merge(
    inpaint: Annotated[Path, typer.Option("--inpaint", "-a", help="A: the official inpainting model of the family.")],
    model: Annotated[Path, typer.Option("--model", "-b", help="B: your fine-tune.")],
    base: Annotated[Path, typer.Option("--base", "-c", help="C: the base model B was trained from.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output .safetensors file.")],
    multiplier: Annotated[float, typer.Option("--multiplier", "-m", help="M in A + (B - C) * M.")] = 1.0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    dtype: Annotated[str, typer.Option(help="Output precision: fp16, bf16 or fp32 (math is fp32 always).")] = "fp16",
    force: Annotated[bool, typer.Option("--force", help="Replace OUT if it exists.")] = False,
    title: Annotated[str | None, typer.Option(help="modelspec.title (default: OUT's name).")] = None,
    sync: Annotated[
        bool,
        typer.Option(
            "--sync/--no-sync",
            help="fsync OUT before it appears: durable across a power loss, but bound by the disk's write speed.",
        ),
    ] = True,
    as_json: JsonOption = False,
) -> None:
    """Build an inpainting model from a fine-tune: OUT = A + (B - C) * M.

    A, B and C may be .safetensors, .ckpt (loaded safely, never executed) or diffusers folders (SDXL's official
    inpainting model only exists as one). Checks family and slot order from tensor shapes before any work,
    streams tensor by tensor (memory does not grow with model size), and writes OUT only when complete.

    Example: [bold]inpaint-advisor merge --inpaint sd-v1-5-inpainting.ckpt --model majicmixRealistic_v7.safetensors
    --base v1-5-pruned-emaonly.safetensors --out majicmixRealistic_v7-inpainting.safetensors[/]
    """
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    from advisor import jsonout, render
    from merge.engine import MergeError, plan_merge, run_merge
    from merge.safetensors_io import CheckpointError

    # torch (imported by run_merge where a tensor needs it) loads numpy, whose OpenBLAS starts a spinning thread
    # per core; a merge never calls BLAS, and on a small machine those threads take CPU from the merge's own.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

    if device not in ("auto", "cpu", "cuda"):
        raise typer.BadParameter("use auto, cpu or cuda", param_hint="--device")
    try:
        plan = plan_merge(inpaint, model, base, out, multiplier=multiplier, dtype=dtype, device=device, force=force)
    except MergeError as exc:
        hint = {"exists": "; pass --force to replace it",
                "inputs": " (A = --inpaint, B = --model, C = --base)"}.get(exc.reason, "")  # fmt: skip
        raise _fail(f"{exc}{hint}") from None
    except CheckpointError as exc:
        raise _fail(str(exc)) from None
    progress = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err,
        disable=as_json,
    )
    try:
        with progress:
            on = "" if plan.device == "auto" else f" on {plan.device}"  # auto is settled by run_merge
            task = progress.add_task(f"merging{on}", total=plan.output_bytes)
            result = run_merge(plan, title=title, progress=lambda n: progress.advance(task, n), sync=sync)
    except (MergeError, CheckpointError) as exc:
        raise _fail(str(exc)) from None
    except KeyboardInterrupt:
        raise _fail(f"interrupted; nothing was written to {out}", 130) from None
    finally:
        plan.close()
    if as_json:
        out_console.print_json(jsonout.dumps(result))
    else:
        render.merge_result(out_console, result)
    # Tearing down torch's modules takes half a second and there is nothing left to clean up: the output is
    # closed and renamed, the inputs unmapped.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _reflow(doc: str) -> str:
    """Typer's rich help keeps the source's line breaks after the first paragraph: join each prose paragraph
    into one line (the terminal wraps it), keep indented lines such as lists of examples as written."""
    paragraphs = inspect.cleandoc(doc).split("\n\n")
    return "\n\n".join(p if any(line.startswith(" ") for line in p.splitlines()) else " ".join(p.split("\n"))
                       for p in paragraphs)  # fmt: skip


for _typer in (app, crawl_app):
    for _info in _typer.registered_commands:
        if _info.help is None and _info.callback is not None and _info.callback.__doc__:
            _info.help = _reflow(_info.callback.__doc__)


def main() -> None:
    app()
