"""The queries behind inpainting links: which models are dedicated inpainting models, their creators' other
models, and the links themselves; and the same checkpoint published on both sources (equal SHA256)."""

from collections.abc import Sequence

from sqlalchemy import select, text, update
from sqlalchemy.engine import Connection, Engine, Row

from crawler.registry.schema import INPAINT_LINK, MODEL, VERSION
from crawler.registry.upsert import upsert


def dedicated_models(conn: Connection) -> Sequence[Row[str, str, str | None, str]]:
    """(id, name, creator, source) of every model whose versions are all inpainting releases."""
    return conn.execute(
        select(MODEL.c.id, MODEL.c.name, MODEL.c.creator, MODEL.c.source).where(
            MODEL.c.is_inpainting.is_(True), MODEL.c.creator.is_not(None)
        )
    ).all()


def sibling_link_ids(conn: Connection) -> set[str]:
    return set(conn.execute(select(INPAINT_LINK.c.id).where(INPAINT_LINK.c.kind == "sibling-model")).scalars())


def creator_models(conn: Connection, source: str, creator: str) -> Sequence[Row[str, str]]:
    """(id, name) of the creator's models on that source that are not inpainting models themselves."""
    return conn.execute(
        select(MODEL.c.id, MODEL.c.name).where(
            MODEL.c.source == source, MODEL.c.creator == creator, MODEL.c.is_inpainting.is_(False)
        )
    ).all()


def versions_of(conn: Connection, model_ids: list[str]) -> list[dict]:
    cols = [VERSION.c.id, VERSION.c.model_id, VERSION.c.name, VERSION.c.published_at,
            VERSION.c.is_inpainting, VERSION.c.inpaint_confidence]  # fmt: skip
    return [dict(r._mapping) for r in conn.execute(select(*cols).where(VERSION.c.model_id.in_(model_ids)))]


def save_sibling_links(conn: Connection, rows: list[dict], parents: set[str]) -> None:
    upsert(conn, INPAINT_LINK, rows)
    if parents:
        conn.execute(update(MODEL).where(MODEL.c.id.in_(parents)).values(has_inpainting=True))


def link_same_files(engine: Engine, hf_model: str | None = None) -> int:
    """Record every Civitai file and Hugging Face file with the same SHA256 (one checkpoint published twice), or
    only those of ``hf_model``; returns how many pairs are new. Plain SQL that SQLite and PostgreSQL both run."""
    only = " AND mb.id = :hf_model" if hf_model else ""
    sql = text(
        "INSERT INTO samefile (id, sha256, model_a, model_b, version_a, version_b) "
        "SELECT a.id || '=' || b.id, a.sha256, va.model_id, vb.model_id, va.id, vb.id "
        "FROM file a JOIN version va ON va.id = a.version_id JOIN model ma ON ma.id = va.model_id "
        "JOIN file b ON b.sha256 = a.sha256 JOIN version vb ON vb.id = b.version_id "
        "JOIN model mb ON mb.id = vb.model_id "
        f"WHERE ma.source = 'civitai' AND mb.source = 'hf' AND a.sha256 IS NOT NULL{only} "
        "ON CONFLICT (id) DO NOTHING"
    )
    with engine.begin() as conn:
        return conn.execute(sql, {"hf_model": hf_model} if hf_model else {}).rowcount or 0
