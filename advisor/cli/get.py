"""`get`: from the answer to a working inpainting setup in the user's UI."""

from pathlib import Path
from typing import Annotated

import typer

from advisor.cli.app import PlainCommand, app
from advisor.cli.common import DbOption, JsonOption, die, die_for

_UIS = "comfyui|a1111|forge|reforge|invokeai|swarmui|fooocus"


@app.command(cls=PlainCommand)
def get(
    query: Annotated[
        str,
        typer.Argument(
            metavar="MODEL",
            show_default=False,
            help="Anything lookup takes: a name, "
            "a Civitai URL, id or AIR, a Hugging Face repo, a hash, or a local file.",
        ),
    ],
    ui: Annotated[
        str | None, typer.Option("--ui", metavar=_UIS, show_default="what --root is", help="The UI to set up.")
    ] = None,
    root: Annotated[Path, typer.Option("--root", metavar="DIR", help="The UI's folder (or its models folder).")] = Path(
        "."
    ),  # fmt: skip
    route: Annotated[
        str | None,
        typer.Option(
            "--route",
            metavar="ID",
            help="Act on this answer instead of the "
            "first one the UI can use: a route id of `lookup --all` (fooocus-"
            "inpaint, controlnet-union-promax, ...), official or build.",
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would be fetched and where; touch nothing.")
    ] = False,  # fmt: skip
    manifest: Annotated[
        bool,
        typer.Option(
            "--manifest",
            help="Print every file (URL, SHA256, size, destination) as JSON for other tools; touch nothing.",
        ),
    ] = False,
    offline: Annotated[bool, typer.Option("--offline", help="Use only what is on disk or in the cache.")] = False,
    enqueue: Annotated[bool, typer.Option("--enqueue", help="Queue it for the team's workers instead (a PostgreSQL "
                                          "registry; a worker must see the UI's folder under the same path).")
                       ] = False,  # fmt: skip
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Make a model ready to inpaint in your UI: act on the best answer that UI can use, whatever it is. A
    release or the official inpainting model is downloaded into the UI's checkpoints; a build is built there;
    a route's files (the Fooocus patch, a ControlNet, a LoRA, a fill model) land each in the folder the UI reads
    that kind from. Then it says what to install and click.

    Files are checked against their pinned SHA256 (a file with none is hashed and said to be unverified), resume
    after a dropped connection or a kill (run the same command again), and take their final name only when
    complete; a file already in the UI with that hash is not fetched again, and one the build cache holds is
    linked from there. ComfyUI's extra_model_paths.yaml is honoured. The UI is told from its folder; name it
    where the folder does not say.

    \b
    Examples:
      inpaint-advisor get "juggernaut xl" --root ~/ComfyUI
      inpaint-advisor get civitai:4384 --ui forge --root ~/forge
      inpaint-advisor get "pony diffusion" --root ~/ComfyUI \\
          --route controlnet-union-promax --dry-run
      inpaint-advisor get myFluxTune.safetensors --root ~/ComfyUI --manifest
      inpaint-advisor get civitai:4384 --root /mnt/ComfyUI --enqueue  (team)

    Exit status: 0 everything is in place (or, with --dry-run/--manifest, planned), 1 it is not, 2 usage.
    """  # noqa: D301
    from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TimeRemainingColumn, TransferSpeedColumn

    from advisor.cli import render
    from advisor.cli.output import err, out, print_json
    from advisor.get import plan_get, run_get

    if ui is not None and ui not in _UIS.split("|"):
        raise die(f"--ui: {ui!r} is not one of {_UIS.replace('|', ', ')}", code="usage", exit_code=2,
                  as_json=as_json or manifest)  # fmt: skip
    if enqueue and (dry_run or manifest or offline):
        raise die("--enqueue queues the get for a worker: --dry-run, --manifest and --offline are for a get run here",
                  code="usage", exit_code=2, as_json=as_json)  # fmt: skip
    if enqueue:
        _enqueue(query, root, ui, route, db, as_json)
        return
    progress = Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                        TransferSpeedColumn(), TimeRemainingColumn(), console=err,
                        disable=as_json or manifest or not err.is_terminal)  # fmt: skip
    tasks: dict[str, TaskID] = {}

    def on_bytes(label: str, done: int, total: int | None) -> None:
        if label not in tasks:
            tasks[label] = progress.add_task(render.line(label).plain[:60], total=total)
        progress.update(tasks[label], completed=done, total=total)

    try:
        plan = plan_get(query, root=root, ui=ui, route=route, db=db, offline=offline)
        if manifest:
            print_json(render.get_manifest(plan.result))
            return
        with progress:
            result = plan.result if dry_run else run_get(plan, progress=on_bytes)
    except Exception as exc:
        raise die_for(exc, as_json=as_json or manifest) from None
    if as_json:
        print_json(result)
    else:
        render.get_result(out, result)
    blocked = any(p.state == "other-file" for p in result.files)  # the run would refuse: a dry run says so too
    raise typer.Exit(0 if result.action in ("ready", "nothing", "planned") and not blocked else 1)


def _enqueue(query: str, root: Path, ui: str | None, route: str | None, db, as_json: bool) -> None:
    from advisor.cli.output import out, print_json
    from advisor.cli.team import queued as render_queued
    from advisor.cli.team import team_failure
    from advisor.team import worker as team

    try:
        queued = team.enqueue_get(query, root=root, ui=ui, route=route, db=db)
    except Exception as exc:
        raise team_failure(exc, as_json, alone="`inpaint-advisor get` without --enqueue, or `scan --get`, does "
                           "the same here") from None
    if as_json:
        print_json({"queued": [queued]})
    else:
        render_queued(out, [queued])
