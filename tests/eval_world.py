"""The lookup evaluation's world: ``tests/fixtures/eval/catalogue.json`` turned into Civitai API items (real
names, their versions, files and hashes, and the look-alikes strangers upload), crawled like any catalogue, plus
the Hub fixture; ``tests/fixtures/eval/queries.json`` says what a careful person means by each query.

Shared by tests/test_eval.py (the score must stay at 100 %) and benchmarks/bench_match.py (precision and the
misses, also among 200,000 models).
"""

import hashlib
import json
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

EVAL = Path(__file__).parent / "fixtures" / "eval"
START = datetime(2023, 1, 1)


def catalogue() -> dict:
    return json.loads((EVAL / "catalogue.json").read_text(encoding="utf-8"))


def queries() -> list[dict]:
    return json.loads((EVAL / "queries.json").read_text(encoding="utf-8"))["queries"]


def sha256_of(version_id: int) -> str:
    """Each version's primary file hash, derived from its id: queries can name them."""
    return hashlib.sha256(f"eval-file-{version_id}".encode()).hexdigest().upper()


def version_id(model_id: int, position: int) -> int:
    return model_id * 10 + position


def _file(vid: int, name: str, when: datetime) -> dict:
    sha = sha256_of(vid)
    return {"id": vid * 10, "sizeKB": 2082642.42, "name": name, "type": "Model", "primary": True,
            "metadata": {"format": "SafeTensor" if name.endswith(".safetensors") else "PickleTensor",
                         "size": "pruned", "fp": "fp16"},
            "hashes": {"AutoV1": sha[:8], "AutoV2": sha[:10], "SHA256": sha, "CRC32": sha[-8:], "AutoV3": sha[10:22]},
            "pickleScanResult": "Success", "virusScanResult": "Success", "scannedAt": when.isoformat() + "Z",
            "downloadUrl": f"https://civitai.com/api/download/models/{vid}"}  # fmt: skip


def item(spec: dict, index: int) -> dict:
    """One Civitai ``/api/v1/models`` item from a catalogue entry (versions newest first, as the API lists them)."""
    mid, versions = spec["id"], []
    for pos, (vname, base, *rest) in enumerate(spec["versions"]):
        vtype = rest[0] if rest else "Standard"
        vid = version_id(mid, pos)
        when = START + timedelta(days=index, hours=len(spec["versions"]) - pos)
        fname = rest[1] if len(rest) > 1 else "".join(ch for ch in f"{spec['name']}_{vname}" if ch.isalnum() or ch
                                                        in "_-.") + ".safetensors"  # fmt: skip
        versions.append({"id": vid, "modelId": mid, "name": vname, "baseModel": base, "baseModelType": vtype,
                         "createdAt": when.isoformat() + "Z", "publishedAt": when.isoformat() + "Z",
                         "updatedAt": when.isoformat() + "Z", "availability": "Public", "trainedWords": [],
                         "stats": {"downloadCount": spec["downloads"] // (pos + 2)}, "files": [_file(vid, fname, when)],
                         "images": [], "downloadUrl": f"https://civitai.com/api/download/models/{vid}"})  # fmt: skip
    return {"id": mid, "name": spec["name"], "type": "Checkpoint", "nsfw": False, "poi": False, "minor": False,
            "description": "<p>A model.</p>", "tags": spec.get("tags", []),
            "creator": {"username": spec.get("creator", "someone")},
            "stats": {"downloadCount": spec["downloads"]}, "modelVersions": versions}  # fmt: skip


def lookalikes(models: list[dict], spec: dict, seed: int = 16) -> list[dict]:
    """Strangers' uploads named after the popular models: for each, every pattern (a same-name re-upload
    included), a few hundred downloads at most, one SD 1.5 or SDXL version."""
    rng = random.Random(seed)
    by_id = {m["id"]: m for m in models}
    taken = {m["name"].lower() for m in models}
    out, next_id = [], 2_000_000
    for mid in spec["popular"]:
        popular = by_id[mid]
        short = popular["name"].split(" 麦")[0]  # "majicMIX realistic 麦橘写实" is "majicMIX realistic" to most
        for pattern in spec["patterns"]:
            name = pattern.format(name=short)
            if name.lower() in taken and pattern != "{name}":
                continue
            taken.add(name.lower())
            base = popular["versions"][0][1]
            out.append({"id": next_id, "name": name, "creator": f"uploader{next_id % 97}",
                        "downloads": rng.randint(5, 900), "tags": [],
                        "versions": [[rng.choice(["v1.0", "v2", "fp16", "1.0", "V3"]), base, "Standard"]]})  # fmt: skip
            next_id += 1
    return out


def civitai_items() -> list[dict]:
    cat = catalogue()
    specs = cat["models"] + lookalikes(cat["models"], cat["lookalikes"])
    return [item(spec, i) for i, spec in enumerate(specs)]


@dataclass
class Miss:
    query: dict
    got: dict

    def line(self) -> str:
        return f"{self.query['q']!r}: expected {_expected(self.query)}, got {self.got}"


def _expected(q: dict) -> dict:
    return {k: q[k] for k in ("model", "version", "kind", "candidates") if k in q}


def outcome(result) -> dict:
    """What a lookup answered, in the queries file's terms."""
    if result.match is None:
        return {"model": None, "candidates": [c.model_id for c in result.candidates]}
    m = result.match
    model = m.model_id or (f"family:{m.family}" if m.source == "family" else None)
    return {"model": model, "version": m.version_name,
            "kind": result.recommendation.kind if result.recommendation else None}


def judge(q: dict, result) -> Miss | None:
    """None when ``result`` is what ``q`` expects: the model (or None), the version's name when given, the
    recommendation's kind when given, and for an ambiguous query the candidates it must list first."""
    got = outcome(result)
    if "candidates" in q:
        listed = got.get("candidates") or []
        ok = got["model"] is None and set(q["candidates"]) <= set(listed[: max(len(q["candidates"]), 5)])
        return None if ok else Miss(q, got)
    if got["model"] != q["model"]:
        return Miss(q, got)
    if "version" in q and got.get("version") != q["version"]:
        return Miss(q, got)
    if "kind" in q and got.get("kind") != q["kind"]:
        return Miss(q, got)
    return None


def build(db: str, serve) -> None:
    """Fill the registry at ``db`` the way users fill theirs: a Civitai crawl and a Hub crawl, over HTTP from
    the fakes (``serve(fake) -> base URL``)."""
    from crawler import civitai, hf
    from crawler import registry as registry_layer
    from crawler.http import RetryPolicy
    from tests.civitai_fake import FakeCivitai
    from tests.hf_fake import FakeHub, fixture_hub

    fast = RetryPolicy(attempts=2, base_delay=0.001)
    engine = registry_layer.open(db)
    civitai.crawl(engine, base_url=serve(FakeCivitai(civitai_items(), duplicate_at_boundary=False)), policy=fast)
    hf.crawl(engine, endpoint=serve(FakeHub(fixture_hub())), policy=fast, check_officials=False,
             sleep=lambda s: None)  # fmt: skip
