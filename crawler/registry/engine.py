"""Opening the registry through SQLAlchemy: for the commands that write (``connect``: created where missing,
upgraded where old) and read-only for `status` (``connect_read_only``: never created, never altered).

Every failure to open becomes one ``RegistryError`` that names the registry and what is wrong with it.
"""

import contextlib
import os
import sqlite3
import weakref

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import QueuePool

from crawler.registry import drivers, migrations, storable
from crawler.registry.errors import NoRegistry, RegistryError
from crawler.registry.location import Location, locate

_engines: dict[tuple[Location, bool], Engine] = {}
_locations: weakref.WeakKeyDictionary[Engine, Location] = weakref.WeakKeyDictionary()  # the registry each reaches


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA busy_timeout=30000")
    # WAL lets `lookup` read while a crawl writes; NORMAL sync is durable across process kills. Switching a
    # registry to WAL needs it to itself: while another process writes, SQLite refuses at once (no busy wait,
    # to avoid a deadlock), and the switch is left to the next opener.
    with contextlib.suppress(sqlite3.OperationalError):
        cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    # A page of the crawl writes a few MB: with the default 1,000-page threshold SQLite checkpointed (and
    # fsynced) the WAL on nearly every commit, and its 2 MB cache kept re-reading index pages.
    cur.execute("PRAGMA wal_autocheckpoint=20000")
    cur.execute("PRAGMA cache_size=-65536")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def where(engine: Engine) -> str:
    """The registry an engine reaches, as messages show it (a path, or a URL without its password)."""
    loc = _locations.get(engine)
    return loc.display if loc else engine.url.render_as_string(hide_password=True)


def _make_engine(loc: Location, read_only: bool) -> Engine:
    engine = _create_engine(loc, read_only)
    _locations[engine] = loc
    return engine


def _create_engine(loc: Location, read_only: bool) -> Engine:
    engine = _dialect_engine(loc, read_only)
    # text both engines can store, in every statement (crawler.registry.storable): one place for every column
    event.listen(engine, "before_cursor_execute", storable.before_cursor_execute, retval=True)
    return engine


def _dialect_engine(loc: Location, read_only: bool) -> Engine:
    if loc.dialect == "sqlite":
        # a creator rather than a sqlite:/// URL: any path works (no URL escaping), and read-only opens fall back
        # to immutable; QueuePool, which SQLAlchemy picks for files but not for a bare "sqlite://"
        engine = create_engine("sqlite://", creator=lambda: drivers.open_sqlite(loc.file, read_only),
                               poolclass=QueuePool)  # fmt: skip
        if not read_only:
            event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    drivers.psycopg_module(loc)
    args: dict[str, int | str] = {"connect_timeout": drivers.CONNECT_TIMEOUT}
    if read_only:
        args["options"] = "-c default_transaction_read_only=on"
    assert loc.url is not None  # every location that is not SQLite has a URL (``locate``)
    return create_engine(loc.url, connect_args=args)


def describe_error(exc: BaseException, loc: Location) -> RegistryError | None:
    """A database error (SQLAlchemy's or a driver's) as one line about the registry, or None if it is not one."""
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    return drivers.describe(orig, loc) if orig is not None else None


def _open(db, *, read_only: bool, prepare) -> Engine:
    """An engine on ``db``, cached once ``prepare(engine, location)`` has accepted it; any failure on the way is
    one RegistryError, and the engine is disposed of."""
    loc = locate(db)
    engine = _engines.get((loc, read_only))
    if engine is not None:
        return engine
    if loc.dialect == "sqlite":
        drivers.check_sqlite_path(loc, create=not read_only)
    engine = _make_engine(loc, read_only=read_only)
    try:
        prepare(engine, loc)
    except Exception as exc:
        engine.dispose()
        error = describe_error(exc, loc)
        if error is None:
            raise
        raise error from None
    _engines[(loc, read_only)] = engine
    return engine


def connect(db: str | os.PathLike | None = None) -> Engine:
    """The registry for a command that writes: created if there is none yet, upgraded if it is older."""
    return _open(db, read_only=False, prepare=lambda engine, loc: migrations.upgrade(engine, loc.display))


def _readable(engine: Engine, loc: Location) -> None:
    with engine.connect() as conn:
        if migrations.state_of(conn, loc.display).fresh:
            raise NoRegistry(f"no registry at {loc.display} yet (the database is empty)")


def connect_read_only(db: str | os.PathLike | None = None) -> Engine:
    """The registry for a command that only reads: never created, never altered; an older schema is read as
    it is (every migration so far only adds)."""
    return _open(db, read_only=True, prepare=_readable)


def forget(db: str | os.PathLike) -> None:
    """Dispose of the engines opened on ``db`` (a scratch registry about to be deleted)."""
    loc = locate(db)
    for key in [k for k in _engines if k[0] == loc]:
        _engines.pop(key).dispose()


def close_all() -> None:
    """Dispose of every engine opened so far (tests drop their databases afterwards)."""
    for engine in _engines.values():
        engine.dispose()
    _engines.clear()
