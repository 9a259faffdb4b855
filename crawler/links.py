"""Which inpainting release belongs to which model: versions of the same model, or a sibling model by the
same creator ("majicMIX realistic" and "majicMIX realistic InPainting")."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import TYPE_CHECKING

from rapidfuzz import fuzz

from crawler.detect import strip_inpainting, version_label
from crawler.registry import normalize_name

if TYPE_CHECKING:
    from crawler.registry import Registry

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


def within_model(model: dict, versions: list[dict]) -> list[dict]:
    """Link rows from each inpainting version of ``model`` to the normal version it was made from."""
    normals = [v for v in versions if not v["is_inpainting"]]
    if not normals:
        return []
    rows = []
    for v in versions:
        if not v["is_inpainting"]:
            continue
        parent, why = _pair_version(v, normals)
        conf = v["inpaint_confidence"] * (1.0 if parent and "same version label" in why else 0.9)
        rows.append(_link(v, model["id"], model["id"], parent, "same-model", conf,
                          ["an inpainting version of the same model", why]))  # fmt: skip
    return rows


def link_sibling_models(reg: Registry) -> int:
    """Link every dedicated inpainting model to the creator's model whose name it extends; returns new links."""
    with reg.transaction() as tx:
        dedicated = tx.dedicated_models()
        if not dedicated:
            return 0
        before = tx.sibling_link_ids()
        # a Civitai user and a Hugging Face author of the same name are not the same person
        by_creator: dict[tuple[str, str], list] = defaultdict(list)
        for row in dedicated:
            by_creator[(row.source, row.creator)].append(row)
        rows, parents = [], set()
        for (source, creator), inpaint_models in by_creator.items():
            candidates = tx.creator_models(source, creator)
            if not candidates:
                continue
            for im in inpaint_models:
                wanted = _comparable(im.name)
                scored = [(fuzz.token_set_ratio(wanted, _comparable(c.name)), c) for c in candidates]
                score, best = max(scored, key=lambda s: (s[0], -abs(len(s[1].name) - len(im.name))))
                if score < SIBLING_MIN_SCORE:
                    continue
                versions = tx.versions_of([im.id, best.id])
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
        tx.save_sibling_links(rows, parents)
        return len({r["id"] for r in rows} - before)


def _comparable(name: str) -> str:
    return normalize_name(strip_inpainting(name))
