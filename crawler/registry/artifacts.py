"""The checkpoints `build` made or fetched: recorded with their recipe, found again by it or by the model."""

import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.engine import Engine

from crawler.registry.reader import unchanged
from crawler.registry.schema import ARTIFACT, Artifact, as_record
from crawler.registry.sql import execute
from crawler.registry.upsert import upsert


@dataclass
class Made:
    key: str
    kind: str  # built | downloaded-release
    path: Path
    sha256: str
    model_id: str | None = None
    version_id: str | None = None
    a_sha256: str | None = None
    b_sha256: str | None = None
    c_sha256: str | None = None
    multiplier: float | None = None
    dtype: str | None = None
    engine: str = ""


def record(engine: Engine, made: Made) -> None:
    st = made.path.stat()
    row = {"id": made.key, "kind": made.kind, "model_id": made.model_id, "version_id": made.version_id,
           "a_sha256": made.a_sha256, "b_sha256": made.b_sha256, "c_sha256": made.c_sha256,
           "multiplier": made.multiplier, "dtype": made.dtype, "engine": made.engine,
           "path": str(made.path.resolve()), "size": st.st_size, "sha256": made.sha256, "mtime_ns": st.st_mtime_ns,
           "host": socket.gethostname(), "created_at": datetime.now(UTC)}  # fmt: skip
    with engine.begin() as conn:
        upsert(conn, ARTIFACT, [row])


def by_key(engine: Engine, key: str) -> Artifact | None:
    """The artifact of this recipe, if its file is still there unchanged."""
    with engine.connect() as conn:
        row = execute(conn, "SELECT * FROM artifact WHERE id = %(key)s", key=key).first()
    if row is None or not unchanged(row.path, row.size, row.mtime_ns):
        return None
    return as_record(Artifact, row)


def recent(engine: Engine, limit: int = 10) -> list[Artifact]:
    with engine.connect() as conn:
        rows = execute(conn, "SELECT * FROM artifact ORDER BY created_at DESC LIMIT %(limit)s", limit=limit).all()
    return [as_record(Artifact, r) for r in rows]
