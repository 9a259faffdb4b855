"""The queries behind header proofs of Civitai versions: which versions still want one, the proofs cached by
file hash, and rewriting a version's verdict (and its model's flags and same-model links) once proven."""

import json
from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy.engine import Connection

from crawler.registry.schema import HEADER_PROOF, INPAINT_LINK, VERSION, typed
from crawler.registry.sql import execute
from crawler.registry.upsert import upsert

# A cheap filter before the exact rules (crawler.detect.ambiguity): something says inpainting somewhere
_HINTS = ["%inp%", "%paint%"]


def key_of(sha256: str | None, file_id: str) -> str:
    return sha256.upper() if sha256 else f"file:{file_id}"


def known(conn: Connection, keys: list[str]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for i in range(0, len(keys), 500):
        rows = execute(conn, "SELECT * FROM headerproof WHERE key IN (%(keys)s)", keys=keys[i : i + 500]).all()
        out.update((r.key, typed(HEADER_PROOF, r)) for r in rows)
    return out


def pending(conn: Connection, limit: int, offset: int = 0,
            contradictions: Sequence[tuple[str, Sequence[str]]] = ()) -> list[dict]:  # fmt: skip
    """Civitai versions whose metadata hints at inpainting somewhere (type, names, model name or tags), has no
    family, or names a family word its family contradicts (``contradictions``: a LIKE pattern of each word, with
    the families it would contradict), with their primary file, whose file has no proof yet: ``limit`` of them from
    ``offset``, the most downloaded models first."""
    params: dict = {"limit": limit, "offset": offset}
    hints = ["v.base_model_type = 'Inpainting'", "v.family IS NULL"]  # or no family known
    for i, pattern in enumerate(_HINTS):
        params[f"hint{i}"] = pattern.lower()
        hints += [f"lower({c}) LIKE %(hint{i})s" for c in ("v.name", "f.name", "m.name", "m.tags")]
    for i, (pattern, contradicted) in enumerate(contradictions):
        params[f"word{i}"], params[f"families{i}"] = pattern.lower(), list(contradicted)
        named = " OR ".join(f"lower({c}) LIKE %(word{i})s" for c in ("v.name", "f.name", "m.name"))
        hints.append(f"(({named}) AND v.family IN (%(families{i})s))")
    sql = ("SELECT v.id, v.source_id, v.name, v.base_model_type, v.family, v.base_model, v.is_inpainting, "
           "v.inpaint_confidence, v.inpaint_evidence, m.id AS model_id, m.name AS model_name, m.tags, "
           "f.id AS file_id, f.name AS file_name, f.sha256, f.format "
           "FROM version v JOIN model m ON m.id = v.model_id "
           'JOIN file f ON f.version_id = v.id AND f."primary" '
           "LEFT JOIN headerproof p ON p.key = coalesce(f.sha256, 'file:' || f.id) "
           f"WHERE m.source = 'civitai' AND p.key IS NULL AND ({' OR '.join(hints)}) "
           "ORDER BY m.downloads DESC, v.id LIMIT %(limit)s OFFSET %(offset)s")  # fmt: skip
    return [typed(VERSION, r) for r in execute(conn, sql, params)]


def save(conn: Connection, rows: list[dict]) -> None:
    now = datetime.now(UTC)
    blank = {"variant": None, "arch": None, "in_channels": None, "how": "", "problem": None, "checked_at": now}
    upsert(conn, HEADER_PROOF, [{**blank, **r} for r in rows])


def set_verdicts(conn: Connection, verdicts: dict[str, tuple[bool, float, list[str]]]) -> set[str]:
    """Rewrite versions' (is_inpainting, confidence, evidence); returns the models they belong to."""
    for vid, (is_inp, conf, evidence) in verdicts.items():
        execute(conn, "UPDATE version SET is_inpainting = %(inp)s, inpaint_confidence = %(conf)s, "
                "inpaint_evidence = %(evidence)s WHERE id = %(id)s", inp=is_inp, conf=conf,
                evidence=json.dumps(evidence), id=vid)  # fmt: skip
    if not verdicts:
        return set()
    return set(execute(conn, "SELECT model_id FROM version WHERE id IN (%(ids)s)", ids=list(verdicts)).scalars())


def set_families(conn: Connection, families: dict[str, str]) -> None:
    """Versions whose family their files' tensors tell (a base model of "Other", unknown or contradicted by the
    file): the version's family, and its model's where the model has none or all its versions now say this."""
    for vid, family in families.items():
        execute(conn, "UPDATE version SET family = %(family)s WHERE id = %(id)s", family=family, id=vid)
        model_id = execute(conn, "SELECT model_id FROM version WHERE id = %(id)s", id=vid).scalar()
        execute(conn, "UPDATE model SET family = %(family)s WHERE id = %(id)s AND (family IS NULL OR NOT EXISTS "
                "(SELECT id FROM version WHERE model_id = %(id)s AND coalesce(family, '') != %(family)s))",
                family=family, id=model_id)  # fmt: skip


def versions_for_links(conn: Connection, model_id: str) -> list[dict]:
    sql = ("SELECT id, name, published_at, is_inpainting, inpaint_confidence FROM version "
           "WHERE model_id = %(id)s ORDER BY position")  # fmt: skip
    return [typed(VERSION, r) for r in execute(conn, sql, id=model_id)]


def refresh_model(conn: Connection, model_id: str, versions: list[dict], same_model_links: list[dict]) -> None:
    """A model's flags and its same-model links after its versions' verdicts changed (sibling links, which the
    crawl's end recomputes, still count for has_inpainting)."""
    sibling = execute(conn, "SELECT id FROM inpaintlink WHERE parent_model_id = %(id)s AND kind = 'sibling-model' "
                      "LIMIT 1", id=model_id).first()  # fmt: skip
    execute(conn, "UPDATE model SET is_inpainting = %(dedicated)s, has_inpainting = %(has)s WHERE id = %(id)s",
            dedicated=bool(versions) and all(v["is_inpainting"] for v in versions),
            has=any(v["is_inpainting"] for v in versions) or sibling is not None, id=model_id)  # fmt: skip
    execute(conn, "DELETE FROM inpaintlink WHERE inpaint_model_id = %(id)s AND kind = 'same-model'", id=model_id)
    upsert(conn, INPAINT_LINK, same_model_links)
