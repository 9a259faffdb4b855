"""Which inpainting release belongs to which model: versions of the same model, or a sibling model by the
same creator ("majicMIX realistic" and "majicMIX realistic InPainting")."""

import json
from collections import defaultdict

from rapidfuzz import fuzz
from sqlalchemy import select, text, update
from sqlalchemy.engine import Connection, Engine

from crawler.detect import strip_inpainting, version_label
from crawler.names import normalize_name
from crawler.schema import InpaintLink, Model, Version
from crawler.store import upsert

SIBLING_MIN_SCORE = 80.0


def _pair_version(inpaint: dict, normals: list[dict]) -> tuple[dict | None, str]:
    """The normal version an inpainting version was made from: same version label, else the newest one
    published before it."""
    label = version_label(inpaint["name"])
    for v in normals:
        if version_label(v["name"]) == label:
            return v, f'pairs with version "{v["name"]}" (same version label)'
    when = inpaint.get("published_at")
    earlier = [v for v in normals if when and v.get("published_at") and v["published_at"] <= when]
    if earlier:
        best = max(earlier, key=lambda v: v["published_at"])
        return best, f'pairs with version "{best["name"]}" (newest release before it)'
    return None, "no matching normal version"


def _link(
    inpaint: dict,
    inpaint_model: str,
    parent_model: str,
    parent: dict | None,
    kind: str,
    confidence: float,
    evidence: list[str],
) -> dict:
    return {
        "id": f"{inpaint['id']}>{parent_model}",
        "inpaint_version_id": inpaint["id"],
        "inpaint_model_id": inpaint_model,
        "parent_model_id": parent_model,
        "parent_version_id": parent["id"] if parent else None,
        "kind": kind,
        "confidence": round(confidence, 4),
        "evidence": json.dumps(evidence),
    }


def link_within_models(conn: Connection, models: list[tuple[dict, list[dict]]]) -> int:
    rows = []
    for model, versions in models:
        normals = [v for v in versions if not v["is_inpainting"]]
        if not normals:
            continue
        for v in versions:
            if not v["is_inpainting"]:
                continue
            parent, why = _pair_version(v, normals)
            conf = v["inpaint_confidence"] * (1.0 if parent and "same version label" in why else 0.9)
            rows.append(
                _link(
                    v,
                    model["id"],
                    model["id"],
                    parent,
                    "same-model",
                    conf,
                    ["an inpainting version of the same model", why],
                )
            )
    return upsert(conn, InpaintLink.__table__, rows)


def link_sibling_models(engine: Engine) -> int:
    """Link every dedicated inpainting model to the creator's model whose name it extends; returns new links."""
    with engine.begin() as conn:
        dedicated = conn.execute(
            select(Model.id, Model.name, Model.creator, Model.source).where(
                Model.is_inpainting.is_(True), Model.creator.is_not(None)
            )
        ).all()
        if not dedicated:
            return 0
        before = set(conn.execute(select(InpaintLink.id).where(InpaintLink.kind == "sibling-model")).scalars())
        # a Civitai user and a Hugging Face author of the same name are not the same person
        by_creator: dict[tuple[str, str], list] = defaultdict(list)
        for row in dedicated:
            by_creator[(row.source, row.creator)].append(row)
        rows, parents = [], set()
        for (source, creator), inpaint_models in by_creator.items():
            candidates = conn.execute(
                select(Model.id, Model.name).where(
                    Model.source == source, Model.creator == creator, Model.is_inpainting.is_(False)
                )
            ).all()
            if not candidates:
                continue
            for im in inpaint_models:
                wanted = _comparable(im.name)
                scored = [(fuzz.token_set_ratio(wanted, _comparable(c.name)), c) for c in candidates]
                score, best = max(scored, key=lambda s: (s[0], -abs(len(s[1].name) - len(im.name))))
                if score < SIBLING_MIN_SCORE:
                    continue
                versions = _versions(conn, [im.id, best.id])
                normals = [v for v in versions if v["model_id"] == best.id and not v["is_inpainting"]]
                for v in (v for v in versions if v["model_id"] == im.id):
                    parent, why = _pair_version(v, normals)
                    evidence = [
                        f'separate model "{im.name}" by the same creator ({creator})',
                        f'name matches "{best.name}" ({score:.0f}/100)',
                        why,
                    ]
                    rows.append(
                        _link(
                            v, im.id, best.id, parent, "sibling-model", v["inpaint_confidence"] * score / 100, evidence
                        )
                    )
                parents.add(best.id)
        upsert(conn, InpaintLink.__table__, rows)
        if parents:
            conn.execute(update(Model).where(Model.id.in_(parents)).values(has_inpainting=True))
        return len({r["id"] for r in rows} - before)


def _comparable(name: str) -> str:
    return normalize_name(strip_inpainting(name))


def _versions(conn: Connection, model_ids: list[str]) -> list[dict]:
    cols = [
        Version.id,
        Version.model_id,
        Version.name,
        Version.published_at,
        Version.is_inpainting,
        Version.inpaint_confidence,
    ]
    return [dict(r._mapping) for r in conn.execute(select(*cols).where(Version.model_id.in_(model_ids)))]


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
