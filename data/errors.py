"""The root of every error inpaint-advisor reports, below all its packages so that each of them can raise one.

An error carries its ``code`` (what ``--json`` prints); its exit status comes from data/error_codes.json, the one
table of codes and statuses (docs/errors.md is generated from it), so that no status is said twice. The CLI turns
any of these errors into its one-line report in one place (advisor/cli/output.py).
"""

from data import load


def exit_status(code: str) -> int:
    """The exit status that goes with an error code (1 for a code the table lacks)."""
    return _statuses().get(code, 1)


def _statuses() -> dict[str, int]:
    return {entry["code"]: entry["exit"] for entry in load("error_codes")["codes"]}


class InpaintAdvisorError(Exception):
    """Something a command cannot do as asked, said in one line. Each kind names its ``code`` as a class
    attribute; ``code=`` gives one error its own (a download that met a login wall, say)."""

    code = "error"  # a kind that forgot its own: still one line, with a code (data/error_codes.json)

    def __init__(self, message: str = "", code: str | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def exit_code(self) -> int:
        return exit_status(self.code)
