"""Writing one page of parsed records, source-agnostic: models, versions, files, the inpainting links within
each model, and the crawl run's next cursor, all in one transaction (a kill leaves either both or neither)."""

from dataclasses import dataclass, field

from sqlalchemy import select, update
from sqlalchemy.engine import Connection, Engine

from crawler.registry import runs
from crawler.registry.schema import (
    CRAWL_LOCK,
    CRAWL_RUN,
    FILE,
    INPAINT_LINK,
    MODEL,
    VERSION,
)
from crawler.registry.upsert import upsert
from data import base_models


@dataclass
class ParsedModel:
    model: dict
    versions: list[dict]
    files: list[dict]
    inpaint_versions: set[str] = field(default_factory=set)
    links: list[dict] = field(default_factory=list)  # inpaintlink rows between its own versions


@dataclass
class PageResult:
    models: int = 0
    versions: int = 0
    written: int = 0  # models whose content changed
    new_inpainting: int = 0
    unknown_base_models: set[str] = field(default_factory=set)


def _content_hashes(conn: Connection, ids: list[str]) -> dict[str, str]:
    if not ids:
        return {}
    return dict(conn.execute(select(MODEL.c.id, MODEL.c.content_hash).where(MODEL.c.id.in_(ids))).all())


def content_hashes(engine: Engine, ids: list[str]) -> dict[str, str]:
    """Model id -> the content hash stored for it, for those of ``ids`` the registry has."""
    with engine.connect() as conn:
        return _content_hashes(conn, ids)


def store_parsed(
    engine: Engine, parsed: dict[str, ParsedModel], run_id: int | None, next_cursor: str | None
) -> PageResult:
    """Write one page and the run's next cursor in one transaction: a kill leaves either both or neither."""
    result = PageResult(models=len(parsed), versions=sum(len(p.versions) for p in parsed.values()))
    for p in parsed.values():
        result.unknown_base_models.update(  # the tool's gaps: video, audio, API-only and joke bases are known
            v["base_model"] for v in p.versions if v["family"] is None and v["base_model"]
            and base_models.is_image(v["base_model"]) and not base_models.api_only(v["base_model"])
        )
    with engine.begin() as conn:
        ids = list(parsed)
        known = _content_hashes(conn, ids)
        changed = [p for mid, p in parsed.items() if known.get(mid) != p.model["content_hash"]]
        if changed:
            changed_ids = [p.model["id"] for p in changed]
            was_inpaint = set(
                conn.execute(
                    select(VERSION.c.id).where(
                        VERSION.c.model_id.in_(changed_ids), VERSION.c.is_inpainting.is_(True)
                    )
                ).scalars()
            )
            result.new_inpainting = sum(len(p.inpaint_versions - was_inpaint) for p in changed)
            upsert(conn, MODEL, [p.model for p in changed])
            upsert(conn, VERSION, [v for p in changed for v in p.versions])
            upsert(conn, FILE, [f for p in changed for f in p.files])
            upsert(conn, INPAINT_LINK, [link for p in changed for link in p.links])
        result.written = len(changed)
        if run_id is not None:
            now = runs.utcnow()
            conn.execute(
                update(CRAWL_RUN)
                .where(CRAWL_RUN.c.id == run_id)
                .values(
                    cursor=next_cursor,
                    pages=CRAWL_RUN.c.pages + 1,
                    items=CRAWL_RUN.c["items"] + result.models,
                    versions=CRAWL_RUN.c.versions + result.versions,
                    new_inpainting=CRAWL_RUN.c.new_inpainting + result.new_inpainting,
                    heartbeat_at=now,
                )
            )
            conn.execute(update(CRAWL_LOCK).where(CRAWL_LOCK.c.run_id == run_id).values(heartbeat_at=now))
    return result
