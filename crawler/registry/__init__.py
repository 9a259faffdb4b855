"""The registry: the one owner of its schema, migrations and every query, on SQLite (embedded, the default)
or PostgreSQL (a team's shared registry).

- ``connect(db)``: an SQLAlchemy engine for commands that write (created where missing, upgraded where old);
- ``connect_read_only(db)``: for commands that only read (never created, never altered);
- ``open_reader(db)``: `lookup`'s fast reader over the plain driver (no SQLAlchemy import); ``open_reader_if_any``
  gives None where there is no registry yet;
- the modules beside this one hold the queries: ``pages`` (a crawl page), ``runs`` (crawl runs and locks),
  ``links``, ``lineage``, ``officials``, ``stats`` (what `status` shows), ``reader``.

``db`` is a path, an URL (``postgresql+psycopg://...``) or None for ``$INPAINT_ADVISOR_DB`` / the default.
Every failure to open is a ``RegistryError`` (``crawler.registry.errors``) that says what is wrong.

Importing this package is cheap: SQLAlchemy and the drivers load with the function that needs them.
"""

from crawler.registry.errors import (  # noqa: F401  (the public surface)
    MissingDriver,
    NewerRegistry,
    NoRegistry,
    NotARegistry,
    ReadOnlyRegistry,
    RegistryError,
    RegistryUnreachable,
    UnsupportedRegistry,
)
from crawler.registry.location import Location, default_db_path, locate  # noqa: F401
from crawler.registry.names import normalize_name  # noqa: F401  (how names are indexed, and so matched)


def connect(db=None):
    from crawler.registry.engine import connect

    return connect(db)


def connect_read_only(db=None):
    from crawler.registry.engine import connect_read_only

    return connect_read_only(db)


def open_reader(db=None):
    from crawler.registry.reader import open_reader

    return open_reader(db)


def open_reader_if_any(db=None):
    """``open_reader(db)``, or None where there is no registry yet (the callers that answer without one)."""
    try:
        return open_reader(db)
    except NoRegistry:
        return None


def describe_error(exc: BaseException, db=None) -> RegistryError | None:
    """A database error raised while using the registry, as one line about it (None: not a database error)."""
    if isinstance(exc, RegistryError):
        return exc
    from crawler.registry.engine import describe_error

    return describe_error(exc, locate(db))
