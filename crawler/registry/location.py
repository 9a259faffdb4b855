"""Where the registry lives: a SQLite file (the default, in the user's data dir) or a PostgreSQL database.

Kept free of SQLAlchemy and drivers, so that `lookup` starts fast.
"""

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from platformdirs import user_data_dir

from crawler.registry.errors import UnsupportedRegistry
from data import settings

_POSTGRES_SCHEMES = {"postgresql", "postgres", "postgresql+psycopg"}


def default_db_path() -> Path:
    return Path(user_data_dir("inpaint-advisor", appauthor=False)) / "registry.db"


@dataclass(frozen=True)
class Location:
    dialect: str  # "sqlite" | "postgresql"
    path: Path | None = None  # the SQLite file
    url: str | None = None  # the SQLAlchemy URL of a PostgreSQL database (driver psycopg)

    @property
    def display(self) -> str:
        """For messages: the path, or the URL with its password hidden."""
        if self.path is not None:
            return str(self.path)
        parts = urlsplit(self.url or "")
        if parts.password:
            host = parts.netloc.rsplit("@", 1)[1]
            parts = parts._replace(netloc=f"{parts.username}:***@{host}")
        return parts.geturl()

    @property
    def file(self) -> Path:
        """The SQLite file, which every SQLite location has."""
        if self.path is None:
            raise ValueError(f"the registry {self.display} is not a SQLite file")
        return self.path

    @property
    def conninfo(self) -> str:
        """The URL as libpq reads it (no SQLAlchemy driver suffix)."""
        if self.url is None:
            raise ValueError(f"the registry {self.display} is not a PostgreSQL database")
        return "postgresql" + self.url[self.url.index("://") :]


def locate(db: str | os.PathLike | None = None) -> Location:
    """``db`` (a path or URL) beats ``$INPAINT_ADVISOR_DB`` beats the data-dir default."""
    value = os.fspath(db) if db else settings.current().db or str(default_db_path())
    if "://" not in value:
        return Location("sqlite", path=Path(value).expanduser())
    scheme = value.split("://", 1)[0].lower()
    if scheme == "sqlite":
        rest = value.split("://", 1)[1]
        if not rest.startswith("/") or rest == "/":
            raise UnsupportedRegistry(f"{value}: a SQLite registry needs a file path (sqlite:///path/to/registry.db)")
        return Location("sqlite", path=Path(rest[1:]).expanduser())
    if scheme in _POSTGRES_SCHEMES:
        url = "postgresql+psycopg://" + value.split("://", 1)[1]
        try:  # what every later use parses: a malformed URL is refused here, without a word of it shown
            parts = urlsplit(url)
            _ = parts.hostname, parts.port
        except ValueError:
            raise UnsupportedRegistry("the PostgreSQL registry URL is malformed: its port must be a number up to "
                                      "65535, and the characters URLs reserve must be percent-encoded in its user "
                                      "name and password ([ as %5B, ] as %5D, @ as %40, / as %2F, : as %3A)") \
                from None  # fmt: skip
        return Location("postgresql", url=url)
    if scheme.startswith("postgresql+"):
        raise UnsupportedRegistry(
            f"registry URL scheme {scheme!r}: the PostgreSQL registry uses the psycopg driver "
            "(postgresql+psycopg://user@host/db)"
        )
    raise UnsupportedRegistry(
        f"registry URL scheme {scheme!r} is not supported: use a SQLite file path or postgresql+psycopg://..."
    )
