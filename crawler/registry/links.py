"""The queries behind inpainting links: which models are dedicated inpainting models, their creators' other
models, and the links themselves; and the same checkpoint published on both sources (equal SHA256)."""

from sqlalchemy import select, text, update
from sqlalchemy.engine import Connection, Engine, Row

from crawler.registry.schema import InpaintLink, Model, Version
from crawler.registry.upsert import upsert


def dedicated_models(conn: Connection) -> list[Row]:
    """(id, name, creator, source) of every model whose versions are all inpainting releases."""
    return conn.execute(
        select(Model.id, Model.name, Model.creator, Model.source).where(
            Model.is_inpainting.is_(True), Model.creator.is_not(None)
        )
    ).all()


def sibling_link_ids(conn: Connection) -> set[str]:
    return set(conn.execute(select(InpaintLink.id).where(InpaintLink.kind == "sibling-model")).scalars())


def creator_models(conn: Connection, source: str, creator: str) -> list[Row]:
    """(id, name) of the creator's models on that source that are not inpainting models themselves."""
    return conn.execute(
        select(Model.id, Model.name).where(
            Model.source == source, Model.creator == creator, Model.is_inpainting.is_(False)
        )
    ).all()


def versions_of(conn: Connection, model_ids: list[str]) -> list[dict]:
    cols = [Version.id, Version.model_id, Version.name, Version.published_at, Version.is_inpainting,
            Version.inpaint_confidence]  # fmt: skip
    return [dict(r._mapping) for r in conn.execute(select(*cols).where(Version.model_id.in_(model_ids)))]


def save_sibling_links(conn: Connection, rows: list[dict], parents: set[str]) -> None:
    upsert(conn, InpaintLink.__table__, rows)
    if parents:
        conn.execute(update(Model).where(Model.id.in_(parents)).values(has_inpainting=True))


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
