"""The registry: the one owner of its schema, migrations and every query, on SQLite (embedded, the default)
or PostgreSQL (a team's shared registry).

- ``open(db)``: a ``Registry`` (crawler.registry.database), the way in for commands that write; each query is
  one of its methods, and ``transaction()`` groups those that land together. ``open(db, "read")`` is a
  ``RegistryView``, its reads alone, which never creates nor alters the registry; ``open(db, "lookup")`` is
  `lookup`'s fast ``Reader`` over the plain driver (no SQLAlchemy import), and ``open_reader_if_any`` gives
  None where there is no registry yet; ``open(db, "queue")`` is the team's job ``Queue`` (a PostgreSQL
  registry's);
- the modules beside this one hold the queries, each written in the one style of ``sql``: ``pages`` (a crawl
  page), ``runs`` (crawl runs and locks), ``links``, ``lineage``, ``officials``, ``proofs``, ``artifacts``,
  ``stats`` (what `status` shows), ``reader``, ``queue`` (the team's jobs).

``db`` is a path, an URL (``postgresql+psycopg://...``) or None for ``$INPAINT_ADVISOR_DB`` / the default.
Every failure to open is a ``RegistryError`` (``crawler.registry.errors``) that says what is wrong.

Importing this package is cheap: SQLAlchemy and the drivers load with the function that needs them.
"""

import os
from typing import TYPE_CHECKING, Literal, overload

from crawler.registry.errors import (
    MissingDriver,
    NewerRegistry,
    NoRegistry,
    NotARegistry,
    ReadOnlyRegistry,
    RegistryError,
    RegistryUnreachable,
    UnsupportedRegistry,
)
from crawler.registry.location import Location, default_db_path, locate
from crawler.registry.names import normalize_name
from crawler.registry.records import (
    ArtifactRecord,
    LinkRecord,
    ModelRecord,
    OfficialState,
    RouteFileState,
    VersionRecord,
)

if TYPE_CHECKING:  # what the names below are, for type checkers
    from crawler.registry.artifacts import Made
    from crawler.registry.database import Registry, RegistryView, Snapshot, Transaction
    from crawler.registry.engine import forget
    from crawler.registry.pages import PageResult, ParsedModel
    from crawler.registry.proofs import (
        key_of as proof_key,
    )
    from crawler.registry.queue import (
        ATTEMPTS as JOB_ATTEMPTS,
    )
    from crawler.registry.queue import (
        JobRecord,
        Queue,
        RunningJob,
        TeamModeNeedsPostgres,
        first_line,
    )
    from crawler.registry.reader import Reader
    from crawler.registry.runs import (
        CrawlLocked,
        RunSummary,
        stopped_note,
        utcnow,
    )
    from crawler.registry.schema import OfficialCheck, RouteCheck
    from crawler.registry.stats import RegistryStatus

__all__ = [
    "MissingDriver", "NewerRegistry", "NoRegistry", "NotARegistry", "ReadOnlyRegistry", "RegistryError",
    "RegistryUnreachable", "UnsupportedRegistry", "Location", "default_db_path", "locate", "normalize_name",
    "ArtifactRecord", "LinkRecord", "ModelRecord", "OfficialState", "RouteFileState", "VersionRecord",
    "MODES", "open", "open_reader_if_any", "describe_error", "Registry", "RegistryView", "Snapshot", "Transaction",
    "Reader",
    "CrawlLocked", "RunSummary", "stopped_note", "utcnow", "ParsedModel", "PageResult", "RegistryStatus",
    "OfficialCheck", "RouteCheck", "Made", "proof_key", "Queue", "RunningJob", "JobRecord",
    "TeamModeNeedsPostgres", "JOB_ATTEMPTS", "first_line", "forget",
]  # fmt: skip

# The rest of the way in, each name from its module on first use (importing the package stays cheap: SQLAlchemy
# and the drivers load with what needs them). Code outside the registry imports these from here, never a module
# of the registry (tests/test_architecture.py). Public name -> "module:name there".
_HOME = {
    # an opened registry: its queries are methods
    "Registry": "database:Registry", "RegistryView": "database:RegistryView",
    "Transaction": "database:Transaction", "Snapshot": "database:Snapshot",
    "Reader": "reader:Reader",
    # what those methods take and give
    "CrawlLocked": "runs:CrawlLocked", "RunSummary": "runs:RunSummary", "stopped_note": "runs:stopped_note",
    "utcnow": "runs:utcnow", "ParsedModel": "pages:ParsedModel", "PageResult": "pages:PageResult",
    "RegistryStatus": "stats:RegistryStatus", "OfficialCheck": "schema:OfficialCheck",
    "RouteCheck": "schema:RouteCheck", "Made": "artifacts:Made", "proof_key": "proofs:key_of",
    # the team's job queue (procrastinate's tables, in a PostgreSQL registry)
    "Queue": "queue:Queue", "RunningJob": "queue:RunningJob", "JobRecord": "queue:JobRecord",
    "TeamModeNeedsPostgres": "queue:TeamModeNeedsPostgres", "JOB_ATTEMPTS": "queue:ATTEMPTS",
    "first_line": "queue:first_line",
    # an engine forgotten (a scratch registry removed)
    "forget": "engine:forget",
}  # fmt: skip


def __getattr__(name: str):
    import importlib

    if name not in _HOME:
        raise AttributeError(f"module 'crawler.registry' has no attribute {name!r}")
    module, attr = _HOME[name].split(":")
    return getattr(importlib.import_module(f"crawler.registry.{module}"), attr)


MODES = ("write", "read", "lookup", "queue")


@overload
def open(db: str | os.PathLike | None = None, mode: Literal["write"] = "write") -> "Registry": ...  # noqa: A001
@overload
def open(db: str | os.PathLike | None, mode: Literal["read"]) -> "RegistryView": ...  # noqa: A001
@overload
def open(db: str | os.PathLike | None, mode: Literal["lookup"]) -> "Reader": ...  # noqa: A001
@overload
def open(db: str | os.PathLike | None, mode: Literal["queue"]) -> "Queue": ...  # noqa: A001
def open(db=None, mode: str = "write"):  # noqa: A001 (the registry's own open, as sqlite-utils' Database)
    """The registry ``db`` (a path, an URL, or None for ``$INPAINT_ADVISOR_DB`` / the default), opened:

    - ``"write"``: a ``Registry`` for commands that write (created where missing, upgraded where old);
    - ``"read"``: a ``RegistryView``, a Registry's reads alone: never created nor altered (`status`,
      `schedule show`);
    - ``"lookup"``: `lookup`'s fast ``Reader`` over the plain driver (no SQLAlchemy import);
    - ``"queue"``: the team's job ``Queue``; TeamModeNeedsPostgres, before anything is touched, unless the
      registry is a PostgreSQL one.
    """
    if mode == "lookup":
        from crawler.registry.reader import open_reader

        return open_reader(db)
    if mode == "queue":
        from crawler.registry.queue import open_queue

        return open_queue(db)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)} (got {mode!r})")
    from crawler.registry.database import open_registry, open_view

    return open_view(db) if mode == "read" else open_registry(db)


def open_reader_if_any(db=None):
    """``open(db, "lookup")``, or None where there is no registry yet (the callers that answer without one)."""
    try:
        return open(db, "lookup")
    except NoRegistry:
        return None


def describe_error(exc: BaseException, db=None) -> RegistryError | None:
    """A database error raised while using the registry, as one line about it (None: not a database error)."""
    if isinstance(exc, RegistryError):
        return exc
    from crawler.registry.engine import describe_error

    return describe_error(exc, locate(db))
