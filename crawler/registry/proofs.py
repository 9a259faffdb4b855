"""The queries behind header proofs of Civitai versions: which versions still want one, the proofs cached by
file hash, and rewriting a version's verdict (and its model's flags and same-model links) once proven."""

import json
from datetime import UTC, datetime

from sqlalchemy import delete, func, literal, select, update
from sqlalchemy.engine import Connection

from crawler.registry.schema import File, HeaderProof, InpaintLink, Model, Version
from crawler.registry.upsert import upsert

# A cheap filter before the exact rules (crawler.detect.ambiguity): something says inpainting somewhere
_HINTS = ["%inp%", "%paint%"]


def key_of(sha256: str | None, file_id: str) -> str:
    return sha256.upper() if sha256 else f"file:{file_id}"


def known(conn: Connection, keys: list[str]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for i in range(0, len(keys), 500):
        rows = conn.execute(select(HeaderProof.__table__).where(HeaderProof.key.in_(keys[i : i + 500]))).all()
        out.update((r.key, dict(r._mapping)) for r in rows)
    return out


def pending(conn: Connection, limit: int, offset: int = 0) -> list[dict]:
    """Civitai versions whose metadata hints at inpainting somewhere (type, names, model name or tags), with
    their primary file, whose file has no proof yet: ``limit`` of them from ``offset``, the most downloaded
    models first."""
    hint = Version.base_model_type == "Inpainting"
    for pattern in _HINTS:
        hint = hint | Version.name.ilike(pattern) | File.name.ilike(pattern) | Model.name.ilike(pattern) | \
            Model.tags.ilike(pattern)  # fmt: skip
    file_key = func.coalesce(File.sha256, literal("file:") + File.id)
    rows = conn.execute(
        select(Version.id, Version.source_id, Version.name, Version.base_model_type, Version.is_inpainting,
               Version.inpaint_confidence, Version.inpaint_evidence, Model.id.label("model_id"),
               Model.name.label("model_name"), Model.tags, File.id.label("file_id"), File.name.label("file_name"),
               File.sha256, File.format)  # fmt: skip
        .join(Model, Model.id == Version.model_id)
        .join(File, (File.version_id == Version.id) & File.primary.is_(True))
        .outerjoin(HeaderProof, HeaderProof.key == file_key)
        .where(Model.source == "civitai", HeaderProof.key.is_(None), hint)
        .order_by(Model.downloads.desc(), Version.id)
        .offset(offset)
        .limit(limit)
    ).all()
    return [dict(r._mapping) for r in rows]


def save(conn: Connection, rows: list[dict]) -> None:
    now = datetime.now(UTC)
    blank = {"variant": None, "arch": None, "in_channels": None, "how": "", "problem": None, "checked_at": now}
    upsert(conn, HeaderProof.__table__, [{**blank, **r} for r in rows])


def set_verdicts(conn: Connection, verdicts: dict[str, tuple[bool, float, list[str]]]) -> set[str]:
    """Rewrite versions' (is_inpainting, confidence, evidence); returns the models they belong to."""
    for vid, (is_inp, conf, evidence) in verdicts.items():
        conn.execute(update(Version).where(Version.id == vid).values(
            is_inpainting=is_inp, inpaint_confidence=conf, inpaint_evidence=json.dumps(evidence)))  # fmt: skip
    if not verdicts:
        return set()
    return set(conn.execute(select(Version.model_id).where(Version.id.in_(list(verdicts)))).scalars())


def versions_for_links(conn: Connection, model_id: str) -> list[dict]:
    cols = [Version.id, Version.name, Version.published_at, Version.is_inpainting, Version.inpaint_confidence]
    return [dict(r._mapping) for r in conn.execute(select(*cols).where(Version.model_id == model_id)
                                                   .order_by(Version.position))]  # fmt: skip


def refresh_model(conn: Connection, model_id: str, versions: list[dict], same_model_links: list[dict]) -> None:
    """A model's flags and its same-model links after its versions' verdicts changed (sibling links, which the
    crawl's end recomputes, still count for has_inpainting)."""
    sibling = conn.execute(select(InpaintLink.id).where(
        InpaintLink.parent_model_id == model_id, InpaintLink.kind == "sibling-model").limit(1)).first()  # fmt: skip
    conn.execute(update(Model).where(Model.id == model_id).values(
        is_inpainting=bool(versions) and all(v["is_inpainting"] for v in versions),
        has_inpainting=any(v["is_inpainting"] for v in versions) or sibling is not None))  # fmt: skip
    conn.execute(delete(InpaintLink).where(InpaintLink.inpaint_model_id == model_id,
                                           InpaintLink.kind == "same-model"))  # fmt: skip
    upsert(conn, InpaintLink.__table__, same_model_links)
