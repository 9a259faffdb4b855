"""`merge`: OUT = A + (B - C) * M, streamed."""

import signal
from pathlib import Path
from typing import Annotated

import typer

from advisor.cli.app import PlainCommand, app
from advisor.cli.common import JsonOption, die, die_for
from data import settings

_HINTS = {"exists": "; pass --force to replace it", "inputs": " (A = --inpaint, B = --model, C = --base)"}


class _Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP: cleaned up like Ctrl-C (the hidden partial output is removed)."""


def _stop(signum, _frame) -> None:
    raise _Stopped(signal.Signals(signum).name)


@app.command(cls=PlainCommand)
def merge(
    inpaint: Annotated[Path, typer.Option("--inpaint", "-a", metavar="A",
                                          help="A: the official inpainting model of the family.")],
    model: Annotated[Path, typer.Option("--model", "-b", metavar="B", help="B: your fine-tune.")],
    base: Annotated[Path, typer.Option("--base", "-c", metavar="C", help="C: the base model B was trained from.")],
    out: Annotated[Path, typer.Option("--out", "-o", metavar="OUT", help="Output .safetensors file.")],
    multiplier: Annotated[float, typer.Option("--multiplier", "-m", metavar="M", help="M in A + (B - C) * M.")] = 1.0,
    device: Annotated[str, typer.Option("--device", metavar="auto|cpu|cuda",
                                        help="Where the arithmetic runs.")] = "auto",  # fmt: skip
    dtype: Annotated[str, typer.Option("--dtype", metavar="fp16|bf16|fp32",
                                       help="Output precision (the arithmetic is fp32 always).")] = "fp16",
    force: Annotated[bool, typer.Option("--force", help="Replace OUT if it exists.")] = False,
    title: Annotated[str | None, typer.Option("--title", metavar="TEXT",
                                              help="modelspec.title (default: OUT's name).")] = None,  # fmt: skip
    sync: Annotated[bool, typer.Option("--sync/--no-sync", help="fsync OUT before it appears: durable across a "
                                       "power loss, but bound by the disk's write speed.")] = True,
    as_json: JsonOption = False,
) -> None:
    """Build an inpainting model from a fine-tune: OUT = A + (B - C) * M.

    A, B and C may be .safetensors, .ckpt (loaded safely, never executed) or diffusers folders (SDXL's official
    inpainting model only exists as one). Family and slot order are checked from tensor shapes before any work;
    the merge streams tensor by tensor (memory does not grow with model size), and OUT appears only when
    complete: an interrupted merge (Ctrl-C, SIGTERM, SIGHUP) leaves nothing under its name.

    \b
    Examples:
      inpaint-advisor merge --inpaint sd-v1-5-inpainting.ckpt \\
          --model majicmixRealistic_v7.safetensors \\
          --base v1-5-pruned-emaonly.safetensors \\
          --out majicmixRealistic_v7-inpainting.safetensors
      inpaint-advisor merge -a stable-diffusion-xl-1.0-inpainting-0.1/ \\
          -b myPony.safetensors -c sd_xl_base_1.0.safetensors \\
          -o myPony-inpainting.safetensors --dtype fp16
    """  # noqa: D301
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    from advisor.cli import render
    from advisor.cli.output import err, print_json
    from advisor.cli.output import out as out_console
    from merge.engine import MergeError, plan_merge, run_merge

    # torch (imported by run_merge where a tensor needs it) loads numpy, whose OpenBLAS starts a spinning thread
    # per core; a merge never calls BLAS, and on a small machine those threads take CPU from the merge's own.
    settings.limit_blas_threads()
    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), _stop)
    if hasattr(signal, "SIGXFSZ"):  # past a file-size limit: an EFBIG error to report, not a silent kill
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    try:
        plan = plan_merge(inpaint, model, base, out, multiplier=multiplier, dtype=dtype, device=device, force=force)
    except MergeError as exc:
        raise die(f"{exc}{_HINTS.get(exc.reason, '')}", code="merge-refused", as_json=as_json) from None
    except Exception as exc:
        raise die_for(exc, as_json=as_json) from None
    progress = Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                        TransferSpeedColumn(), TimeRemainingColumn(), console=err,
                        disable=as_json or not err.is_terminal)  # fmt: skip
    try:
        with progress:
            on = "" if plan.device == "auto" else f" on {plan.device}"  # auto is settled by run_merge
            task = progress.add_task(f"merging{on}", total=plan.output_bytes)
            result = run_merge(plan, title=title, progress=lambda n: progress.advance(task, n), sync=sync)
    except MergeError as exc:
        if exc.reason == "exists":  # another run's output took the name meanwhile: refused, as at planning
            raise die(f"{exc}{_HINTS['exists']}", code="merge-refused", as_json=as_json) from None
        raise die(str(exc), code="merge-failed", as_json=as_json) from None
    except _Stopped as exc:
        raise die(f"stopped by {exc}; nothing was written to {out}", code="interrupted", exit_code=130,
                  as_json=as_json) from None  # fmt: skip
    except KeyboardInterrupt:
        raise die(f"interrupted; nothing was written to {out}", code="interrupted", exit_code=130,
                  as_json=as_json) from None  # fmt: skip
    except Exception as exc:
        raise die_for(exc, as_json=as_json) from None
    finally:
        plan.close()
    if as_json:
        print_json(result)
    else:
        render.merge_result(out_console, result)
