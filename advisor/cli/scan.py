"""`scan`: a models folder, each checkpoint with its inpainting partner."""

from pathlib import Path
from typing import Annotated

import typer

from advisor.cli.app import PlainCommand, app
from advisor.cli.common import DbOption, JsonOption, die, die_for, run_batch_and_report


@app.command(cls=PlainCommand)
def scan(
    paths: Annotated[list[Path] | None, typer.Argument(
        metavar="PATH...", show_default=False,
        help="A UI's folder, its models folder, or any folder (default: the current one).")] = None,
    offline: Annotated[bool, typer.Option("--offline", help="Do not ask Civitai about files the registry "
                                          "does not know.")] = False,  # fmt: skip
    do_build: Annotated[bool, typer.Option("--build", help="Fetch or build every missing partner beside its "
                                           "model (resumable: run again to go on).")] = False,
    do_get: Annotated[bool, typer.Option("--get", help="`get` for every checkpoint: each one's answer made ready "
                                         "in the UI's folders, a shared route fetched once (resumable).")] = False,
    ui: Annotated[str | None, typer.Option("--ui", metavar="UI", help="With --get: the UI, where the folder does "
                                           "not say (comfyui, a1111, forge, ...).")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, metavar="N", help="With --build/--get: at most N."
                                              )] = None,  # fmt: skip
    family: Annotated[str | None, typer.Option("--family", metavar="F", help="With --build/--get: only this family "
                                               "(sd1, sdxl, ...).")] = None,  # fmt: skip
    dry_run: Annotated[bool, typer.Option("--dry-run", help="With --build/--get: the plan and the disk it needs."
                                          )] = False,  # fmt: skip
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Pair every checkpoint in your models folder with the inpainting model to use with it, preferring one
    that is already on disk. A1111/Forge, ComfyUI (with extra_model_paths.yaml), InvokeAI, SwarmUI and Fooocus
    folders are recognised; LoRAs, VAEs, text encoders, ControlNets and upscalers are listed as set aside.
    Checkpoints are hashed once (cached by path, size, mtime, ctime and inode) and found in the registry by hash; hashes
    it does not know are asked of Civitai (100 a request) unless --offline, and what it knows is stored. Where
    the folder holds the official SD 1.5 or SDXL base file, each fine-tune's distance from it is measured
    (16 MB of each file, kept for the next scan) and weighs the official model against a build.

    With --build, every partner still missing is downloaded (a release) or built (the official pair's merge)
    into the folder of its model, named <model>-inpainting.safetensors; the disk needed is shown first; a
    failure is reported and the rest go on; run the same command again to resume. Exit 1 if any failed.

    With --get, each checkpoint's answer is made ready in the UI as `inpaint-advisor get` does (a route's files
    in the UI's folders, a release or the official model in its checkpoints, a build there): a file several
    models need is fetched once, the disk needed is shown first, and the same command again resumes.

    \b
    Examples:
      inpaint-advisor scan ~/stable-diffusion-webui
      inpaint-advisor scan ~/ComfyUI/models --json
      inpaint-advisor scan ~/stable-diffusion-webui --build --family sd1 --dry-run
      inpaint-advisor scan ~/ComfyUI --get --family sdxl
    """  # noqa: D301
    from rich.progress import BarColumn, MofNCompleteColumn, Progress

    from advisor.cli import render
    from advisor.cli.output import err, out, print_json
    from advisor.local.scan import scan as do_scan

    paths = paths or [Path(".")]
    missing = [p for p in paths if not p.expanduser().is_dir()]
    if missing:
        what = "not a folder (scan takes a models folder or a UI's root; `lookup FILE` answers for one file)" \
            if missing[0].expanduser().exists() else "no such folder"  # fmt: skip
        raise die(f"{missing[0]}: {what}", code="bad-query", exit_code=2, as_json=as_json)
    progress = Progress("identifying", BarColumn(), MofNCompleteColumn(), console=err,
                        disable=as_json or not err.is_terminal)  # fmt: skip
    task = progress.add_task("scan", total=None)
    try:
        with progress:
            results = do_scan(paths, db=db, offline=offline,
                              progress=lambda done, total: progress.update(task, completed=done, total=total))
    except Exception as exc:  # the registry unreadable or unreachable, ...: one line, as every command says it
        raise die_for(exc, as_json=as_json) from None
    if do_build and do_get:
        raise die("--build or --get, not both", code="usage", exit_code=2, as_json=as_json)
    if do_build:
        _batch(results, db, limit, family, dry_run, offline, as_json)
        return
    if do_get:
        _get_all(results, ui, db, limit, family, dry_run, offline, as_json)
        return
    if as_json:
        print_json(results[0] if len(results) == 1 else results)
    else:
        for r in results:
            render.scan_result(out, r)


def _batch(results, db, limit, family, dry_run: bool, offline: bool, as_json: bool) -> None:
    from advisor.build.batch import todo

    run_batch_and_report(todo(results, family=family, limit=limit), as_json=as_json, db=db, dry_run=dry_run,
                         offline=offline)  # fmt: skip


def _get_all(results, ui, db, limit, family, dry_run: bool, offline: bool, as_json: bool) -> None:
    """`scan --get`: one line per checkpoint as it is done, one summary, exit 1 if any failed."""
    from advisor.cli import render
    from advisor.cli.output import err, out, print_json
    from advisor.get.batch import get_folder
    from advisor.local import uis

    if ui is not None and ui not in uis.ids():
        raise die(f"--ui: {ui!r} is not one of {', '.join(uis.ids())}", code="usage", exit_code=2, as_json=as_json)
    plain = next((r.root for r in results if r.layout == "folder"), None)
    if plain is not None and ui is None:
        raise die(f"{plain} is not a UI folder inpaint-advisor recognises: name the UI with --ui "
                  f"({', '.join(uis.ids())})", code="no-ui", exit_code=2, as_json=as_json)  # fmt: skip
    batches = []
    for scanned in results:
        def on_item(item) -> None:
            if not as_json:
                err.print(render.line((f"{item.status}: ", "bold"), item.path))

        batches.append(get_folder(scanned, ui=ui, family=family, limit=limit, db=db, offline=offline,
                                  dry_run=dry_run, on_item=on_item))  # fmt: skip
    if as_json:
        print_json(batches[0] if len(batches) == 1 else batches)
    else:
        for batch in batches:
            render.get_batch(out, batch)
    if any(b.count("failed") for b in batches):
        raise typer.Exit(1)
