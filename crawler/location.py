"""Where the registry lives. Kept free of SQLModel/SQLAlchemy so `lookup` starts fast."""

import os
from pathlib import Path

from platformdirs import user_data_dir

ENV_VAR = "INPAINT_ADVISOR_DB"


def default_db_path() -> Path:
    return Path(user_data_dir("inpaint-advisor", appauthor=False)) / "registry.db"


def resolve_db_url(db: str | os.PathLike | None = None, *, create_dir: bool = True) -> str:
    """``db`` (a path or URL) beats ``$INPAINT_ADVISOR_DB`` beats the data-dir default."""
    value = str(db) if db else os.environ.get(ENV_VAR) or str(default_db_path())
    if "://" in value:
        return value
    path = Path(value).expanduser()
    if create_dir:
        path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def sqlite_path(url: str) -> Path | None:
    """The file behind a ``sqlite:///`` URL, or None for other databases."""
    return Path(url[len("sqlite:///") :]) if url.startswith("sqlite:///") else None
