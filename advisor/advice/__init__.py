"""Advice: which inpainting checkpoint goes with a model, from whatever the user pasted.

What the user pasted (`query`), which model and version it names (`match`), the answer for it (`lookup`), the
recommendation ladder and the routes beside it (`ladder`, `routes`), and the commands the user is told to run,
as data (`commands`).

The names below are imported on first use, so importing the package costs nothing. ``lookup()`` itself is
``advisor.advice.lookup.lookup`` (the module has that name).
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from advisor.advice.commands import Command, EnvRef, shell_text
    from advisor.advice.ladder import Recommendation, Target
    from advisor.advice.lookup import Candidate, LookupResult, Match, NotFound
    from advisor.advice.query import Query, QueryError, parse_query

__all__ = ["Candidate", "Command", "EnvRef", "LookupResult", "Match", "NotFound", "Query", "QueryError",
           "Recommendation", "Target", "parse_query", "shell_text"]  # fmt: skip

_HOME = {"Command": "commands", "EnvRef": "commands", "shell_text": "commands", "Recommendation": "ladder",
         "Target": "ladder", "Candidate": "lookup", "LookupResult": "lookup", "Match": "lookup",
         "NotFound": "lookup", "Query": "query", "QueryError": "query", "parse_query": "query"}  # fmt: skip

if not TYPE_CHECKING:

    def __getattr__(name: str):
        """A public name, from its module at each use (a test's monkeypatch there is seen here too)."""
        if name not in _HOME:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
