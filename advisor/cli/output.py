"""Where commands print, and how they fail: one place for the CLI and `lookup`'s fast path (which must not
import typer). A failure is one terminal-safe line on stderr, or with ``--json`` one JSON object on stdout,
``{"error": {"code", "message"}}``, with the same exit status either way, so a script always gets JSON."""

import sys

from rich.console import Console

out = Console()
err = Console(stderr=True, soft_wrap=True)  # an error is one line, however long: logs and scripts read it whole

USAGE = 2  # exit status of a usage or configuration error, as click uses it


def print_json(obj) -> None:
    from advisor.cli import jsonout
    from data.settings import scrub

    sys.stdout.write(scrub(jsonout.dumps(obj)) + "\n")  # no configured secret, whatever a server echoed
    sys.stdout.flush()


def fail(message: str, *, code: str, exit_code: int = 1, as_json: bool = False) -> int:
    """Report a failure; returns the exit status to end with. No configured secret is ever printed."""
    from data.settings import scrub

    message = scrub(message)
    if as_json:
        from advisor.cli import jsonout

        sys.stdout.write(jsonout.error(code, message) + "\n")
        sys.stdout.flush()
    else:
        from advisor.cli.render import error_line

        err.print(error_line(message))
    return exit_code


def fail_for(exc: BaseException, *, as_json: bool) -> int | None:
    """The failure report for an error of the tool's own (its code and the exit status data/error_codes.json
    gives it), an interrupt or an OS error; None for anything else (a bug: its traceback is the report)."""
    from data.errors import InpaintAdvisorError

    if isinstance(exc, InpaintAdvisorError):
        return fail(str(exc), code=exc.code, exit_code=exc.exit_code, as_json=as_json)
    if isinstance(exc, KeyboardInterrupt):
        return fail("interrupted", code="interrupted", exit_code=130, as_json=as_json)
    if isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        return fail(f"{where}{exc.strerror}", code="os-error", as_json=as_json)
    return None
