"""The queries behind header proofs of Civitai versions: which versions still want one, the proofs cached by
file hash, and rewriting a version's verdict (and its model's flags and same-model links) once proven."""

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, func, literal, select, update
from sqlalchemy.engine import Connection, Row
from sqlmodel import col

from crawler.registry.schema import File, HeaderProof, InpaintLink, Model, Version, table_of
from crawler.registry.upsert import upsert

# A cheap filter before the exact rules (crawler.detect.ambiguity): something says inpainting somewhere
_HINTS = ["%inp%", "%paint%"]


def key_of(sha256: str | None, file_id: str) -> str:
    return sha256.upper() if sha256 else f"file:{file_id}"


def known(conn: Connection, keys: list[str]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for i in range(0, len(keys), 500):
        rows = conn.execute(select(table_of(HeaderProof)).where(col(HeaderProof.key).in_(keys[i : i + 500]))).all()
        out.update((r.key, dict(r._mapping)) for r in rows)
    return out


def pending(conn: Connection, limit: int, offset: int = 0,
            contradictions: Sequence[tuple[str, Sequence[str]]] = ()) -> list[dict]:  # fmt: skip
    """Civitai versions whose metadata hints at inpainting somewhere (type, names, model name or tags), has no
    family, or names a family word its family contradicts (``contradictions``: a LIKE pattern of each word, with
    the families it would contradict), with their primary file, whose file has no proof yet: ``limit`` of them from
    ``offset``, the most downloaded models first."""
    hint = (col(Version.base_model_type) == "Inpainting") | col(Version.family).is_(None)  # or no family known
    for pattern in _HINTS:
        hint = hint | col(Version.name).ilike(pattern) | col(File.name).ilike(pattern) | \
            col(Model.name).ilike(pattern) | col(Model.tags).ilike(pattern)  # fmt: skip
    for pattern, contradicted in contradictions:
        hint = hint | ((col(Version.name).ilike(pattern) | col(File.name).ilike(pattern) |
                        col(Model.name).ilike(pattern)) & col(Version.family).in_(list(contradicted)))  # fmt: skip
    file_key = func.coalesce(col(File.sha256), literal("file:") + col(File.id))
    rows: Sequence[Row[*tuple[Any, ...]]] = conn.execute(
        select(col(Version.id), col(Version.source_id), col(Version.name), col(Version.base_model_type),
               col(Version.family), col(Version.base_model),
               col(Version.is_inpainting), col(Version.inpaint_confidence), col(Version.inpaint_evidence),
               col(Model.id).label("model_id"), col(Model.name).label("model_name"), col(Model.tags),
               col(File.id).label("file_id"), col(File.name).label("file_name"), col(File.sha256),
               col(File.format))  # fmt: skip
        .join(Model, col(Model.id) == Version.model_id)
        .join(File, (col(File.version_id) == Version.id) & col(File.primary).is_(True))
        .outerjoin(HeaderProof, col(HeaderProof.key) == file_key)
        .where(col(Model.source) == "civitai", col(HeaderProof.key).is_(None), hint)
        .order_by(col(Model.downloads).desc(), col(Version.id))
        .offset(offset)
        .limit(limit)
    ).all()
    return [dict(r._mapping) for r in rows]


def save(conn: Connection, rows: list[dict]) -> None:
    now = datetime.now(UTC)
    blank = {"variant": None, "arch": None, "in_channels": None, "how": "", "problem": None, "checked_at": now}
    upsert(conn, table_of(HeaderProof), [{**blank, **r} for r in rows])


def set_verdicts(conn: Connection, verdicts: dict[str, tuple[bool, float, list[str]]]) -> set[str]:
    """Rewrite versions' (is_inpainting, confidence, evidence); returns the models they belong to."""
    for vid, (is_inp, conf, evidence) in verdicts.items():
        conn.execute(update(Version).where(col(Version.id) == vid).values(
            is_inpainting=is_inp, inpaint_confidence=conf, inpaint_evidence=json.dumps(evidence)))  # fmt: skip
    if not verdicts:
        return set()
    return set(conn.execute(select(col(Version.model_id)).where(col(Version.id).in_(list(verdicts)))).scalars())


def set_families(conn: Connection, families: dict[str, str]) -> None:
    """Versions whose family their files' tensors tell (a base model of "Other", unknown or contradicted by the
    file): the version's family, and its model's where the model has none or all its versions now say this."""
    for vid, family in families.items():
        conn.execute(update(Version).where(col(Version.id) == vid).values(family=family))
        model_id = conn.execute(select(col(Version.model_id)).where(col(Version.id) == vid)).scalar()
        other = select(col(Version.id)).where(col(Version.model_id) == model_id,
                                              func.coalesce(col(Version.family), "") != family)  # fmt: skip
        conn.execute(update(Model).where(col(Model.id) == model_id, col(Model.family).is_(None) | ~other.exists())
                     .values(family=family))  # fmt: skip


def versions_for_links(conn: Connection, model_id: str) -> list[dict]:
    cols = [col(Version.id), col(Version.name), col(Version.published_at), col(Version.is_inpainting),
            col(Version.inpaint_confidence)]  # fmt: skip
    return [dict(r._mapping) for r in conn.execute(select(*cols).where(col(Version.model_id) == model_id)
                                                   .order_by(col(Version.position)))]  # fmt: skip


def refresh_model(conn: Connection, model_id: str, versions: list[dict], same_model_links: list[dict]) -> None:
    """A model's flags and its same-model links after its versions' verdicts changed (sibling links, which the
    crawl's end recomputes, still count for has_inpainting)."""
    sibling = conn.execute(select(col(InpaintLink.id)).where(
        col(InpaintLink.parent_model_id) == model_id, col(InpaintLink.kind) == "sibling-model").limit(1)
    ).first()  # fmt: skip
    conn.execute(update(Model).where(col(Model.id) == model_id).values(
        is_inpainting=bool(versions) and all(v["is_inpainting"] for v in versions),
        has_inpainting=any(v["is_inpainting"] for v in versions) or sibling is not None))  # fmt: skip
    conn.execute(delete(InpaintLink).where(col(InpaintLink.inpaint_model_id) == model_id,
                                           col(InpaintLink.kind) == "same-model"))  # fmt: skip
    upsert(conn, table_of(InpaintLink), same_model_links)
