"""`lookup` and `probe`: what a model is, and which inpainting checkpoint goes with it."""

from pathlib import Path
from typing import Annotated

import typer

from advisor.cli.app import PlainCommand, app
from advisor.cli.common import DbOption, JsonOption, die_for


@app.command(cls=PlainCommand)
def lookup(
    query: Annotated[str, typer.Argument(metavar="MODEL", help="A name (typos welcome), a Civitai URL, id or AIR, "
                                         "a Hugging Face repo, a hash, or a local file or folder.")],
    offline: Annotated[bool, typer.Option("--offline", help="Never go to the network.")] = False,
    show_all: Annotated[bool, typer.Option("--all", help="Every alternative in full: its files, how to use it in "
                                           "each UI, its sources, and the raw merge of a build.")] = False,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Which inpainting checkpoint should I use with this model?

    Answers, in order: it already is one; its own inpainting release; the creator's inpainting model; the
    official inpainting model of its family, how to build one (the exact merge command) and the other routes
    (patches, ControlNets, ...), weighed together. A name that several models match about as well lists them.
    The answer comes with its commands (each on a line of its own, to copy whole), then one line per alternative.
    For a local SD 1.5 or SDXL file, the official base file beside it (or in the build cache) is read, 16 MB of
    it, to measure how far the file is from it: far, a build ranks above the official model.

    \b
    Examples:
      inpaint-advisor lookup "majicmix realistic v7"
      inpaint-advisor lookup "dreamshapr 8 inpainting"  (typo; version at the end)
      inpaint-advisor lookup https://civitai.com/models/4384?modelVersionId=128713
      inpaint-advisor lookup dreamshaper_8.safetensors  (a file name)
      inpaint-advisor lookup urn:air:sdxl:checkpoint:civitai:4201@130072
      inpaint-advisor lookup Lykon/dreamshaper-8        (a Hugging Face repo)
      inpaint-advisor lookup 7C819B6D13                 (an AutoV2 hash)
      inpaint-advisor lookup "Juggernaut XL" --all    (every alternative in full)
      inpaint-advisor lookup ./myModel.safetensors --json

    Exit status: 0 answered, 1 nothing matched (or several candidates), 2 usage or registry error.
    """  # noqa: D301
    from advisor.cli.answer import run_lookup

    raise typer.Exit(run_lookup(query, db=db, offline=offline, as_json=as_json, show_all=show_all))


@app.command(cls=PlainCommand)
def probe(
    path: Annotated[Path, typer.Argument(metavar="FILE|FOLDER", help="A .safetensors file or a diffusers folder.")],
    with_hash: Annotated[bool, typer.Option("--hash", help="Add SHA256, AutoV2, AutoV3 (one streaming read).")] = False,
    as_json: JsonOption = False,
) -> None:
    """Family, variant, prediction type, precision and size of a checkpoint, from its header alone.

    \b
    Examples:
      inpaint-advisor probe sd_xl_base_1.0.safetensors --json
      inpaint-advisor probe myModel.safetensors --hash
    """  # noqa: D301
    from advisor.cli import render
    from advisor.cli.output import out, print_json
    from advisor.local.probe import probe as do_probe

    try:
        result = do_probe(path, with_hash=with_hash)
    except Exception as exc:
        raise die_for(exc, as_json=as_json) from None
    if as_json:
        print_json(result)
    else:
        render.probe_result(out, result)
