"""`build`: a model name in, a verified inpainting checkpoint out."""

from pathlib import Path
from typing import Annotated

import typer

from advisor.cli.app import PlainCommand, app
from advisor.cli.common import DbOption, JsonOption, die, die_for, run_batch_and_report


@app.command(cls=PlainCommand)
def build(
    queries: Annotated[list[str] | None, typer.Argument(metavar="MODEL...", show_default=False, help="Anything "
                                                        "lookup takes: a name, a Civitai URL, id or AIR, a Hugging "
                                                        "Face repo, a hash, or a local file (several with "
                                                        "--enqueue).")] = None,
    out: Annotated[Path, typer.Option("--out", metavar="DIR", help="Where the result goes.")] = Path("."),
    inpaint: Annotated[str | None, typer.Option("--inpaint", "-a", metavar="A",
                                                help="Your own A (else the family's official one).")] = None,
    base: Annotated[str | None, typer.Option("--base", "-c", metavar="C",
                                             help="Your own C (else the family's official base).")] = None,
    multiplier: Annotated[float, typer.Option("--multiplier", "-m", metavar="M", help="M in A + (B - C) * M.")] = 1.0,
    dtype: Annotated[str, typer.Option("--dtype", metavar="fp16|bf16|fp32", help="Output precision.")] = "fp16",
    device: Annotated[str, typer.Option("--device", metavar="auto|cpu|cuda", help="Where the merge runs.")] = "auto",
    force_build: Annotated[bool, typer.Option("--force-build",
                                              help="Build even where an inpainting release exists.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the plan: route, files, disk, merge.")] = False,
    offline: Annotated[bool, typer.Option("--offline", help="Use only what is on disk or in the cache.")] = False,
    missing: Annotated[bool, typer.Option("--missing", help="Instead of MODEL: the registry's most downloaded "
                                          "models without an inpainting release, into --out.")] = False,
    family: Annotated[str | None, typer.Option("--family", metavar="F", help="With --missing: only this family.")
                      ] = None,  # fmt: skip
    min_downloads: Annotated[int, typer.Option("--min-downloads", min=0, metavar="N",
                                               help="With --missing: at least N downloads.")] = 0,  # fmt: skip
    limit: Annotated[int, typer.Option("--limit", min=1, metavar="K", help="With --missing: at most K models.")
                     ] = 20,  # fmt: skip
    allow_nonfinite: Annotated[bool, typer.Option("--allow-nonfinite", help="Keep an output with NaN/Inf values "
                                                  "its inputs do not have (refused by default).")] = False,
    prepare_pair: Annotated[bool, typer.Option("--prepare-pair", help="Also fold A and C into the family's "
                                               "prepared pair (D = A - M*C, fp32) in this build's pass: later "
                                               "builds of the family read D and B, not A and C (which may then "
                                               "leave the disk). Writes ~2x an fp16 output's bytes more, once.")
                  ] = False,  # fmt: skip
    enqueue: Annotated[bool, typer.Option("--enqueue", help="Queue the build(s) for the team's workers instead "
                                          "(a PostgreSQL registry; see `inpaint-advisor worker`).")] = False,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Get a verified inpainting checkpoint for a model: its own release when one was made for your version,
    else a build A + (B - C) * M with the family's official A and C, fetched as needed.

    Downloads resume after a dropped connection or a kill (run the same command again), are checked against
    the SHA256 the registry records, and land under their final name only when complete. A build is merged
    into a hidden file and named only when checked (NaN/Inf its inputs lack: refused); a file already under
    that name is adopted when its header names this recipe, and never overwritten otherwise. A, C and fetched
    fine-tunes are kept in the cache for the next build. The result is recorded: lookup then points at it,
    and the same build again does no work.

    \b
    Examples:
      inpaint-advisor build "majicmix realistic v7"
      inpaint-advisor build civitai:4384 --out ~/models/Stable-diffusion
      inpaint-advisor build ./myModel.safetensors --dry-run
      inpaint-advisor build myPony.safetensors -a sdxl-inpainting/ \\
          -c sd_xl_base_1.0.safetensors
      inpaint-advisor build --missing --family sd1 --min-downloads 10000 \\
          --limit 5 --out ~/inpainting
      inpaint-advisor build civitai:4384 civitai:43331 --enqueue  (team mode)

    Exit status: 0 the output exists and is verified, 1 it could not be made (or is unverified), 2 usage.
    """  # noqa: D301
    from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TimeRemainingColumn, TransferSpeedColumn

    from advisor.build import build as do_build
    from advisor.cli import render
    from advisor.cli.output import USAGE, err, print_json
    from advisor.cli.output import out as out_console
    from data.errors import InpaintAdvisorError

    queries = queries or []  # (typer gives None for no MODEL)
    if missing == bool(queries):
        raise die("give a MODEL, or --missing for the registry's most downloaded models without one",
                  code="usage", exit_code=2, as_json=as_json)  # fmt: skip
    if enqueue:
        _enqueue(queries, missing, family, min_downloads, limit, db, as_json,
                 dict(inpaint=inpaint, base=base, multiplier=multiplier, dtype=dtype, force_build=force_build,
                      allow_nonfinite=allow_nonfinite, prepare_pair=prepare_pair))  # fmt: skip
        return
    if missing:
        _build_missing(out, family, min_downloads, limit, dry_run, offline, db, as_json,
                       dict(inpaint=inpaint, base=base, multiplier=multiplier, dtype=dtype, device=device,
                            force_build=force_build, allow_nonfinite=allow_nonfinite,
                            prepare_pair=prepare_pair))  # fmt: skip
        return
    if len(queries) > 1:
        raise die("one MODEL at a time (several with --enqueue)", code="usage", exit_code=2, as_json=as_json)
    query = queries[0]
    progress = Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                        TransferSpeedColumn(), TimeRemainingColumn(), console=err,
                        disable=as_json or not err.is_terminal)  # fmt: skip
    tasks: dict[str, TaskID] = {}

    def on_bytes(label: str, done: int, total: int | None) -> None:
        if label not in tasks:
            tasks[label] = progress.add_task(render.line(label).plain[:60], total=total)
        progress.update(tasks[label], completed=done, total=total)

    merging: dict[str, TaskID] = {}

    def on_merge(n: int) -> None:
        if "task" not in merging:
            merging["task"] = progress.add_task("merging", total=None)
        progress.advance(merging["task"], n)

    try:
        with progress:
            result = do_build(query, out=out, inpaint=inpaint, base=base, multiplier=multiplier, dtype=dtype,
                              device=device, force_build=force_build, dry_run=dry_run, offline=offline, db=db,
                              progress=on_bytes, merge_progress=on_merge, allow_nonfinite=allow_nonfinite,
                              prepare_pair=prepare_pair)  # fmt: skip
    except Exception as exc:
        if isinstance(exc, ValueError) and not isinstance(exc, InpaintAdvisorError):  # a parser under QueryError
            raise die(str(exc), code="bad-query", exit_code=USAGE, as_json=as_json) from None
        raise die_for(exc, as_json=as_json) from None
    if as_json:
        print_json(result)
    else:
        render.build_result(out_console, result)
    raise typer.Exit(0 if result.verified or result.action == "planned" else 1)


def _build_missing(out: Path, family, min_downloads: int, limit: int, dry_run: bool, offline: bool, db, as_json: bool,
                   options: dict) -> None:  # fmt: skip
    from advisor.build.batch import missing
    from crawler import registry

    try:
        queries = missing(db, family=family, min_downloads=min_downloads, limit=limit)
    except registry.RegistryError as exc:
        raise die_for(exc, as_json=as_json) from None
    run_batch_and_report(queries, as_json=as_json, db=db, dry_run=dry_run, offline=offline, out=out, **options)


def _enqueue(queries, missing: bool, family, min_downloads: int, limit: int, db, as_json: bool, options: dict) -> None:
    """Queue the builds for the team's workers: each query resolved here first (nothing queued when one matches
    nothing), one job per resolved recipe. A and C are the family's official pair, which every worker fetches:
    files named with -a/-c are on this host only, so they are refused."""
    from advisor.build.batch import missing as most_used_without_release
    from advisor.cli.output import out, print_json
    from advisor.cli.team import queued as render_queued
    from advisor.cli.team import team_failure
    from advisor.team import worker as team

    if options.get("inpaint") or options.get("base"):
        raise die("--inpaint/--base name files on this host, which the workers cannot read: a queued build uses "
                  "its family's official A and C (build here, without --enqueue, to use your own)", code="usage",
                  exit_code=2, as_json=as_json)  # fmt: skip
    here_only = [flag for flag, key in (("--allow-nonfinite", "allow_nonfinite"), ("--prepare-pair", "prepare_pair"))
                 if options.get(key)]  # fmt: skip
    if here_only:
        verb, them = ("applies", "it") if len(here_only) == 1 else ("apply", "them")
        raise die(f"{' and '.join(here_only)} {verb} to a build on this host only: a queued build cannot carry "
                  f"{them} (build here, without --enqueue, to use {them})", code="usage", exit_code=2,
                  as_json=as_json)  # fmt: skip
    recipe = {k: options[k] for k in ("multiplier", "dtype", "force_build")}
    try:
        if missing:
            queries = most_used_without_release(db, family=family, min_downloads=min_downloads, limit=limit)
        queued = team.enqueue(list(queries), db=db, **recipe)
    except Exception as exc:
        raise team_failure(exc, as_json) from None
    if as_json:
        print_json({"queued": queued})
    else:
        render_queued(out, queued)
