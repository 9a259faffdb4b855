"""The queries behind inpainting links: which models are dedicated inpainting models, their creators' other
models, and the links themselves; and the same checkpoint published on both sources (equal SHA256)."""

from collections.abc import Sequence

from sqlalchemy.engine import Connection, Engine, Row

from crawler.registry.schema import INPAINT_LINK, VERSION, typed
from crawler.registry.sql import execute
from crawler.registry.upsert import upsert


def dedicated_models(conn: Connection) -> Sequence[Row]:
    """(id, name, creator, source) of every model whose versions are all inpainting releases."""
    return execute(
        conn, "SELECT id, name, creator, source FROM model WHERE is_inpainting AND creator IS NOT NULL"
    ).all()


def sibling_link_ids(conn: Connection) -> set[str]:
    return set(execute(conn, "SELECT id FROM inpaintlink WHERE kind = 'sibling-model'").scalars())


def creator_models(conn: Connection, source: str, creator: str) -> Sequence[Row]:
    """(id, name) of the creator's models on that source that are not inpainting models themselves."""
    sql = "SELECT id, name FROM model WHERE source = %(source)s AND creator = %(creator)s AND NOT is_inpainting"
    return execute(conn, sql, source=source, creator=creator).all()


def versions_of(conn: Connection, model_ids: list[str]) -> list[dict]:
    sql = ("SELECT id, model_id, name, published_at, is_inpainting, inpaint_confidence FROM version "
           "WHERE model_id IN (%(ids)s)")  # fmt: skip
    return [typed(VERSION, r) for r in execute(conn, sql, ids=model_ids)]


def save_sibling_links(conn: Connection, rows: list[dict], parents: set[str]) -> None:
    upsert(conn, INPAINT_LINK, rows)
    if parents:
        execute(conn, "UPDATE model SET has_inpainting = %(yes)s WHERE id IN (%(ids)s)", yes=True, ids=list(parents))


def link_same_files(engine: Engine, hf_model: str | None = None) -> int:
    """Record every Civitai file and Hugging Face file with the same SHA256 (one checkpoint published twice), or
    only those of ``hf_model``; returns how many pairs are new."""
    only = " AND mb.id = %(hf_model)s" if hf_model else ""
    sql = (
        "INSERT INTO samefile (id, sha256, model_a, model_b, version_a, version_b) "
        "SELECT a.id || '=' || b.id, a.sha256, va.model_id, vb.model_id, va.id, vb.id "
        "FROM file a JOIN version va ON va.id = a.version_id JOIN model ma ON ma.id = va.model_id "
        "JOIN file b ON b.sha256 = a.sha256 JOIN version vb ON vb.id = b.version_id "
        "JOIN model mb ON mb.id = vb.model_id "
        f"WHERE ma.source = 'civitai' AND mb.source = 'hf' AND a.sha256 IS NOT NULL{only} "
        "ON CONFLICT (id) DO NOTHING"
    )
    with engine.begin() as conn:
        return execute(conn, sql, hf_model=hf_model).rowcount or 0
