"""Writing one page of parsed records, source-agnostic: models, versions, files, the inpainting links within
each model, and the crawl run's next cursor, all in one transaction (a kill leaves either both or neither)."""

from dataclasses import dataclass, field

from sqlalchemy.engine import Connection, Engine

from crawler.registry import runs
from crawler.registry.schema import FILE, INPAINT_LINK, MODEL, VERSION
from crawler.registry.sql import execute
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
    return dict(execute(conn, "SELECT id, content_hash FROM model WHERE id IN (%(ids)s)", ids=ids).all())


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
            v["base_model"]
            for v in p.versions
            if v["family"] is None
            and v["base_model"]
            and base_models.is_image(v["base_model"])
            and not base_models.api_only(v["base_model"])
        )
    with engine.begin() as conn:
        ids = list(parsed)
        known = _content_hashes(conn, ids)
        changed = [p for mid, p in parsed.items() if known.get(mid) != p.model["content_hash"]]
        if changed:
            changed_ids = [p.model["id"] for p in changed]
            sql = "SELECT id FROM version WHERE model_id IN (%(ids)s) AND is_inpainting"
            was_inpaint = set(execute(conn, sql, ids=changed_ids).scalars())
            result.new_inpainting = sum(len(p.inpaint_versions - was_inpaint) for p in changed)
            upsert(conn, MODEL, [p.model for p in changed])
            upsert(conn, VERSION, [v for p in changed for v in p.versions])
            upsert(conn, FILE, [f for p in changed for f in p.files])
            upsert(conn, INPAINT_LINK, [link for p in changed for link in p.links])
        result.written = len(changed)
        if run_id is not None:
            now = runs.utcnow()
            execute(conn, "UPDATE crawlrun SET cursor = %(cursor)s, pages = pages + 1, items = items + %(models)s, "
                    "versions = versions + %(versions)s, new_inpainting = new_inpainting + %(new)s, "
                    "heartbeat_at = %(now)s WHERE id = %(id)s", cursor=next_cursor, models=result.models,
                    versions=result.versions, new=result.new_inpainting, now=now, id=run_id)  # fmt: skip
            execute(conn, "UPDATE crawllock SET heartbeat_at = %(now)s WHERE run_id = %(id)s", now=now, id=run_id)
    return result
