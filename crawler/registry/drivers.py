"""The database drivers themselves (sqlite3, psycopg), for `lookup`'s reader and under SQLAlchemy alike: how
to open each, and what their errors mean for the user. No SQLAlchemy here, so `lookup` starts fast."""

import sqlite3
from pathlib import Path

from crawler.registry.errors import (
    MissingDriver,
    NoRegistry,
    NotARegistry,
    ReadOnlyRegistry,
    RegistryError,
    RegistryUnreachable,
)
from crawler.registry.location import Location

CONNECT_TIMEOUT = 5  # seconds to wait for a PostgreSQL server before saying it does not answer


def check_sqlite_path(loc: Location, *, create: bool) -> None:
    path = loc.file
    if path.is_dir():
        raise NotARegistry(f"{path} is a directory, not a registry file")
    if path.exists():
        return
    if not create:
        raise NoRegistry(f"no registry at {path} yet")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RegistryError(f"cannot create the registry's folder {path.parent}: {exc.strerror}") from None


def sqlite_uri(path: Path, read_only: bool) -> str:
    """A ``file:`` URI for any path (``?``, ``#`` and ``%`` in folder names are escaped)."""
    return path.resolve().as_uri() + ("?mode=ro" if read_only else "")


def open_sqlite(path: Path, read_only: bool) -> sqlite3.Connection:
    """Read-only opens fall back to ``immutable`` where the folder cannot be written (a read-only medium: a WAL
    registry otherwise needs to create its -shm file). SQLite opens lazily, so a first read tells."""
    uri = sqlite_uri(path, read_only)
    conn = sqlite3.connect(uri, uri=True, timeout=30, check_same_thread=False)
    if not read_only:
        return conn
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return conn
    except sqlite3.OperationalError as exc:
        if "unable to open" not in str(exc) and "readonly" not in str(exc):
            raise
        conn.close()
    return sqlite3.connect(uri + "&immutable=1", uri=True, check_same_thread=False)


def psycopg_module(loc: Location):
    try:
        import psycopg
    except ImportError:
        raise MissingDriver(
            f"the registry {loc.display} is on PostgreSQL, which needs the psycopg driver: "
            "pip install 'inpaint-advisor[postgres]'"
        ) from None
    return psycopg


def open_postgres(loc: Location, *, read_only: bool):
    psycopg = psycopg_module(loc)
    options = "-c default_transaction_read_only=on" if read_only else ""
    return psycopg.connect(loc.conninfo, connect_timeout=CONNECT_TIMEOUT, autocommit=True, options=options)


def describe(exc: BaseException, loc: Location) -> RegistryError | None:
    """A driver's exception as one line about the registry; None for anything else."""
    if isinstance(exc, RegistryError):
        return exc
    if isinstance(exc, sqlite3.DatabaseError):
        message = str(exc)
        if "not a database" in message or "malformed" in message:
            return NotARegistry(f"{loc.display} is not a SQLite database (corrupt, or another kind of file)")
        if "readonly" in message:
            return ReadOnlyRegistry(f"the registry {loc.display} cannot be written (a read-only file or medium)")
        if "unable to open" in message:
            return RegistryError(f"cannot open the registry {loc.display}: {message}")
        return RegistryError(f"registry {loc.display}: {message}")
    if type(exc).__module__.startswith("psycopg"):
        first = " ".join(str(exc).split())
        if type(exc).__name__ == "OperationalError":
            return RegistryUnreachable(f"cannot reach the registry at {loc.display}: {first}")
        return RegistryError(f"registry {loc.display}: {first}")
    return None
