"""`status`: what the registry holds."""


from advisor.cli.app import app
from advisor.cli.common import DbOption, JsonOption, die, die_for


@app.command()
def status(db: DbOption = None, as_json: JsonOption = False) -> None:
    """Show what the registry holds: models per family, inpainting coverage, unknown base models, official
    checkpoints alive or gone, recent crawls. Reads only: never creates or changes a registry.

    \b
    Examples:
      inpaint-advisor status
      inpaint-advisor status --json
    """  # noqa: D301
    from advisor import render
    from advisor.output import out, print_json
    from crawler import registry
    from crawler.registry.stats import registry_status

    try:
        st = registry_status(registry.connect_read_only(db))
    except registry.NoRegistry as exc:
        raise die(f"{exc}: fill one with `inpaint-advisor crawl civitai` (and `crawl hf`)", code=exc.code,
                  exit_code=exc.exit_code, as_json=as_json) from None  # fmt: skip
    except Exception as exc:
        error = registry.describe_error(exc, db)
        raise die_for(error or exc, as_json=as_json) from None
    if as_json:
        print_json(st)
    else:
        render.registry_status(out, st)
