"""The typer application and its top-level options; each command group lives in a module beside this one."""

from typing import Annotated

import typer

app = typer.Typer(
    name="inpaint-advisor",
    help="Find the right inpainting checkpoint for a Stable Diffusion fine-tune, or build one.",
    no_args_is_help=True,
    rich_markup_mode=None,  # click's plain help: no type column squeezing the text, env var names never cut
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
crawl_app = typer.Typer(help="Fill the registry from a model hub.", no_args_is_help=True,
                        context_settings={"help_option_names": ["-h", "--help"]})  # fmt: skip
app.add_typer(crawl_app, name="crawl")


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"inpaint-advisor {version('inpaint-advisor')}")
        except PackageNotFoundError:
            typer.echo("inpaint-advisor (not installed)")
        raise typer.Exit(0)


@app.callback()
def _top(
    _: Annotated[bool | None, typer.Option("--version", callback=_version, is_eager=True,
                                           help="Print the version and exit.")] = None,
) -> None:
    """Find the right inpainting checkpoint for a Stable Diffusion fine-tune, or build one.

    Start with `inpaint-advisor lookup "<your model>"`; fill the registry with `inpaint-advisor crawl civitai`.
    """
