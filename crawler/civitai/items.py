"""Civitai's `/api/v1/models` items as registry rows.

Items drift over the years (domain.md section 1): every field is optional here, enum values are kept as
written, and dates come with or without a trailing ``Z``.
"""

import hashlib
import json
from typing import Any

from crawler import detect, links
from crawler.families import family_for_base_model
from crawler.registry import ParsedModel, normalize_name
from crawler.timestamps import registry_dt


def _str(value) -> str | None:
    return value if isinstance(value, str) and value else None


def _list(value) -> list:
    return value if isinstance(value, list) else []


def _dict(value) -> dict:
    return value if isinstance(value, dict) else {}


_HASH_KINDS = ("sha256", "autov1", "autov2", "autov3", "crc32", "blake3")


def _hashes(raw: dict) -> dict[str, str | None]:
    """Civitai's ``hashes`` object (key case varies, any may be missing) as upper-case hex per kind."""
    found = {k.lower(): v.upper() for k, v in raw.items() if isinstance(k, str) and isinstance(v, str) and v}
    return {kind: found.get(kind) for kind in _HASH_KINDS}


def parse_model(item: dict) -> ParsedModel | None:
    """One `/models` item to rows; None when it has no usable id."""
    mid = item.get("id")
    if not isinstance(mid, int | str) or isinstance(mid, bool):
        return None
    model_id = f"civitai:{mid}"
    name = _str(item.get("name")) or f"model {mid}"
    raw_tags = [t if isinstance(t, str) else _str(_dict(t).get("name")) for t in _list(item.get("tags"))]
    tags = [t for t in raw_tags if t]
    creator = _str(_dict(item.get("creator")).get("username"))
    raw_versions = [v for v in _list(item.get("modelVersions")) if isinstance(v, dict) and v.get("id") is not None]

    def file_names(v: dict) -> list[str]:
        return [f["name"] for f in _list(v.get("files")) if isinstance(f, dict) and _str(f.get("name"))]

    dedicated = not any(
        detect.version_has_own_signal(_str(v.get("name")), _str(v.get("baseModelType")), file_names(v))
        for v in raw_versions
    )
    versions: list[dict[str, Any]] = []
    files: list[dict[str, Any]] = []
    inpaint: set[str] = set()
    newest: str | None = None  # registry_dt's text form, which compares like the instants
    for position, v in enumerate(raw_versions):
        vid = f"civitai:v{v['id']}"
        vname = _str(v.get("name")) or f"version {v['id']}"
        base_model = _str(v.get("baseModel"))
        bmt = _str(v.get("baseModelType"))
        found = detect.detect_version(
            version_name=vname,
            base_model_type=bmt,
            file_names=file_names(v),
            model_name=name,
            model_tags=tags,
            model_is_dedicated=dedicated,
        )
        if found.is_inpainting:
            inpaint.add(vid)
        published = registry_dt(v.get("publishedAt")) or registry_dt(v.get("createdAt"))
        updated = registry_dt(v.get("updatedAt")) or published
        newest = max(filter(None, [newest, updated, published]), default=None)
        versions.append(
            {
                "id": vid,
                "model_id": model_id,
                "source_id": str(v["id"]),
                "name": vname,
                "base_model": base_model,
                "base_model_type": bmt,
                "family": family_for_base_model(base_model),
                "published_at": published,
                "updated_at": updated,
                "position": position,
                "is_inpainting": found.is_inpainting,
                "inpaint_confidence": found.confidence,
                "inpaint_evidence": json.dumps(found.evidence),
                "download_url": _str(v.get("downloadUrl")),
            }
        )
        for n, f in enumerate(_list(v.get("files"))):
            if not isinstance(f, dict):
                continue
            meta = _dict(f.get("metadata"))
            fid = f"civitai:f{f['id']}" if f.get("id") is not None else f"{vid}/file{n}"
            size = f.get("sizeKB")
            files.append(
                {
                    "id": fid,
                    "version_id": vid,
                    "name": _str(f.get("name")) or fid,
                    "type": _str(f.get("type")),
                    "size_kb": float(size) if isinstance(size, int | float) and not isinstance(size, bool) else None,
                    "format": _str(meta.get("format")),
                    "fp": _str(meta.get("fp")),
                    "primary": f.get("primary") is True,
                    **_hashes(_dict(f.get("hashes"))),
                    "download_url": _str(f.get("downloadUrl")),
                }
            )
    base_model = versions[0]["base_model"] if versions else None
    model: dict[str, Any] = {
        "id": model_id,
        "source": "civitai",
        "source_id": str(mid),
        "name": name,
        "name_norm": normalize_name(name),
        "type": _str(item.get("type")),
        "creator": creator,
        "tags": json.dumps(tags),
        "nsfw": item.get("nsfw") is True,
        "mode": _str(item.get("mode")),
        "base_model": base_model,
        "family": family_for_base_model(base_model),
        "is_inpainting": bool(versions) and len(inpaint) == len(versions),
        "has_inpainting": bool(inpaint),
        "updated_at": newest,
    }
    # repr() of plain dicts built in a fixed order is deterministic, and several times cheaper than json.dumps.
    digest = hashlib.blake2b(repr((model, versions, files)).encode(), digest_size=16).hexdigest()
    model["content_hash"] = digest
    count = _dict(item.get("stats")).get("downloadCount")
    model["downloads"] = count if isinstance(count, int) and not isinstance(count, bool) and count >= 0 else 0
    return ParsedModel(model, versions, files, inpaint, links.within_model(model, versions))


def parse_page(items: list) -> dict[str, ParsedModel]:
    parsed: dict[str, ParsedModel] = {}
    for item in items:
        p = parse_model(item) if isinstance(item, dict) else None
        if p is not None:
            parsed[p.model["id"]] = p  # a repeated id within a page: the later copy wins
    return parsed
