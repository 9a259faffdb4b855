"""The queries behind header proofs of Civitai versions: which versions still want one, the proofs cached by
file hash, and rewriting a version's verdict (and its model's flags and same-model links) once proven."""

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, func, literal, select, update
from sqlalchemy.engine import Connection, Row

from crawler.registry.schema import (
    FILE,
    HEADER_PROOF,
    INPAINT_LINK,
    MODEL,
    VERSION,
)
from crawler.registry.upsert import upsert

# A cheap filter before the exact rules (crawler.detect.ambiguity): something says inpainting somewhere
_HINTS = ["%inp%", "%paint%"]


def key_of(sha256: str | None, file_id: str) -> str:
    return sha256.upper() if sha256 else f"file:{file_id}"


def known(conn: Connection, keys: list[str]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for i in range(0, len(keys), 500):
        rows = conn.execute(select(HEADER_PROOF).where(HEADER_PROOF.c.key.in_(keys[i : i + 500]))).all()
        out.update((r.key, dict(r._mapping)) for r in rows)
    return out


def pending(conn: Connection, limit: int, offset: int = 0,
            contradictions: Sequence[tuple[str, Sequence[str]]] = ()) -> list[dict]:  # fmt: skip
    """Civitai versions whose metadata hints at inpainting somewhere (type, names, model name or tags), has no
    family, or names a family word its family contradicts (``contradictions``: a LIKE pattern of each word, with
    the families it would contradict), with their primary file, whose file has no proof yet: ``limit`` of them from
    ``offset``, the most downloaded models first."""
    hint = (VERSION.c.base_model_type == "Inpainting") | VERSION.c.family.is_(None)  # or no family known
    for pattern in _HINTS:
        hint = hint | VERSION.c.name.ilike(pattern) | FILE.c.name.ilike(pattern) | \
            MODEL.c.name.ilike(pattern) | MODEL.c.tags.ilike(pattern)  # fmt: skip
    for pattern, contradicted in contradictions:
        hint = hint | ((VERSION.c.name.ilike(pattern) | FILE.c.name.ilike(pattern) |
                        MODEL.c.name.ilike(pattern)) & VERSION.c.family.in_(list(contradicted)))  # fmt: skip
    file_key = func.coalesce(FILE.c.sha256, literal("file:") + FILE.c.id)
    rows: Sequence[Row[*tuple[Any, ...]]] = conn.execute(
        select(VERSION.c.id, VERSION.c.source_id, VERSION.c.name, VERSION.c.base_model_type,
               VERSION.c.family, VERSION.c.base_model,
               VERSION.c.is_inpainting, VERSION.c.inpaint_confidence, VERSION.c.inpaint_evidence,
               MODEL.c.id.label("model_id"), MODEL.c.name.label("model_name"), MODEL.c.tags,
               FILE.c.id.label("file_id"), FILE.c.name.label("file_name"), FILE.c.sha256,
               FILE.c.format)  # fmt: skip
        .join(MODEL, MODEL.c.id == VERSION.c.model_id)
        .join(FILE, (FILE.c.version_id == VERSION.c.id) & FILE.c.primary.is_(True))
        .outerjoin(HEADER_PROOF, HEADER_PROOF.c.key == file_key)
        .where(MODEL.c.source == "civitai", HEADER_PROOF.c.key.is_(None), hint)
        .order_by(MODEL.c.downloads.desc(), VERSION.c.id)
        .offset(offset)
        .limit(limit)
    ).all()
    return [dict(r._mapping) for r in rows]


def save(conn: Connection, rows: list[dict]) -> None:
    now = datetime.now(UTC)
    blank = {"variant": None, "arch": None, "in_channels": None, "how": "", "problem": None, "checked_at": now}
    upsert(conn, HEADER_PROOF, [{**blank, **r} for r in rows])


def set_verdicts(conn: Connection, verdicts: dict[str, tuple[bool, float, list[str]]]) -> set[str]:
    """Rewrite versions' (is_inpainting, confidence, evidence); returns the models they belong to."""
    for vid, (is_inp, conf, evidence) in verdicts.items():
        conn.execute(update(VERSION).where(VERSION.c.id == vid).values(
            is_inpainting=is_inp, inpaint_confidence=conf, inpaint_evidence=json.dumps(evidence)))  # fmt: skip
    if not verdicts:
        return set()
    return set(conn.execute(select(VERSION.c.model_id).where(VERSION.c.id.in_(list(verdicts)))).scalars())


def set_families(conn: Connection, families: dict[str, str]) -> None:
    """Versions whose family their files' tensors tell (a base model of "Other", unknown or contradicted by the
    file): the version's family, and its model's where the model has none or all its versions now say this."""
    for vid, family in families.items():
        conn.execute(update(VERSION).where(VERSION.c.id == vid).values(family=family))
        model_id = conn.execute(select(VERSION.c.model_id).where(VERSION.c.id == vid)).scalar()
        other = select(VERSION.c.id).where(VERSION.c.model_id == model_id,
                                              func.coalesce(VERSION.c.family, "") != family)  # fmt: skip
        conn.execute(update(MODEL).where(MODEL.c.id == model_id, MODEL.c.family.is_(None) | ~other.exists())
                     .values(family=family))  # fmt: skip


def versions_for_links(conn: Connection, model_id: str) -> list[dict]:
    cols = [VERSION.c.id, VERSION.c.name, VERSION.c.published_at, VERSION.c.is_inpainting,
            VERSION.c.inpaint_confidence]  # fmt: skip
    return [dict(r._mapping) for r in conn.execute(select(*cols).where(VERSION.c.model_id == model_id)
                                                   .order_by(VERSION.c.position))]  # fmt: skip


def refresh_model(conn: Connection, model_id: str, versions: list[dict], same_model_links: list[dict]) -> None:
    """A model's flags and its same-model links after its versions' verdicts changed (sibling links, which the
    crawl's end recomputes, still count for has_inpainting)."""
    sibling = conn.execute(select(INPAINT_LINK.c.id).where(
        INPAINT_LINK.c.parent_model_id == model_id, INPAINT_LINK.c.kind == "sibling-model").limit(1)
    ).first()  # fmt: skip
    conn.execute(update(MODEL).where(MODEL.c.id == model_id).values(
        is_inpainting=bool(versions) and all(v["is_inpainting"] for v in versions),
        has_inpainting=any(v["is_inpainting"] for v in versions) or sibling is not None))  # fmt: skip
    conn.execute(delete(INPAINT_LINK).where(INPAINT_LINK.c.inpaint_model_id == model_id,
                                           INPAINT_LINK.c.kind == "same-model"))  # fmt: skip
    upsert(conn, INPAINT_LINK, same_model_links)
