"""The typer application and its top-level options; each command group lives in a module beside this one."""

from typing import Annotated

import typer
from typer.core import TyperCommand, TyperGroup

SUBCOMMAND = "COMMAND [ARGS...]"  # a group's usage line, written as the commands' own are (click: COMMAND [ARGS]...)


class PlainCommand(TyperCommand):
    """Help that shows an argument by its metavar alone, as click shows an option: typer adds the Python type
    (``MODEL <str>``, ``PATH <list[Path]>``) and an ellipsis of its own (``[MODEL...]...``). An argument's metavar
    says it all: ``MODEL``, ``PATH...`` (several), ``all|prepared|files`` (a choice); an optional one is shown in
    brackets in the usage line."""

    def collect_usage_pieces(self, ctx) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument" and param.metavar:
                pieces.append(param.metavar if param.required else f"[{param.metavar}]")
            else:
                pieces.extend(param.get_usage_pieces(ctx))
        return pieces

    def format_options(self, ctx, formatter) -> None:
        arguments, options = [], []
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            if param.param_type_name == "argument":
                arguments.append((param.metavar or record[0], record[1]))
            else:
                options.append(record)
        for title, records in (("Arguments", arguments), ("Options", options)):
            if records:
                with formatter.section(title):
                    formatter.write_dl(records)


class PlainGroup(TyperGroup):
    """A group whose command list shows each command's first sentence whole, wrapped to the width: click cuts
    it to one line and ends it with "...", which left `build`, `merge` and most others half-said."""

    def format_commands(self, ctx, formatter) -> None:
        rows = [(name, command.get_short_help_str(limit=10_000)) for name in self.list_commands(ctx)
                if (command := self.get_command(ctx, name)) is not None and not command.hidden]  # fmt: skip
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


app = typer.Typer(
    name="inpaint-advisor",
    cls=PlainGroup,
    help="Find the right inpainting checkpoint for a Stable Diffusion fine-tune, or build one.",
    no_args_is_help=True,
    subcommand_metavar=SUBCOMMAND,
    rich_markup_mode=None,  # click's plain help: no type column squeezing the text, env var names never cut
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
crawl_app = typer.Typer(help="Fill the registry from a model hub.", no_args_is_help=True, cls=PlainGroup,
                        subcommand_metavar=SUBCOMMAND,
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
