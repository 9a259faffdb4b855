"""Hugging Face Hub: every repo descending from a base in data/, with its lineage and whether it is an
inpainting model, proven from its files (``crawler.hf.inspect``).

One registry model per repo (``hf:author/name``); one version per checkpoint it holds: the diffusers folder
(``hf:author/name@diffusers``) and each single-file checkpoint at its root (``hf:author/name@file.safetensors``),
so a repo with ``model.safetensors`` next to ``model-inpainting.safetensors`` links the two like Civitai versions.
Repos whose commit ``sha`` is unchanged since the last crawl cost no request beyond their listing page.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, NotRequired, TypedDict

import crawler.hf.officials as officials
from crawler import detect, families, links, registry
from crawler.hf.hub import Hub
from crawler.hf.inspect import Checkpoint, Inspection, config, inspect
from crawler.http import RetryPolicy
from crawler.registry import ParsedModel, normalize_name
from crawler.timestamps import parse_dt
from data import settings

if TYPE_CHECKING:
    from crawler.registry import Registry

PAGE_SIZE = 100
# Bumped when parsing or detection changes, so that the next crawl re-reads repos whose commit did not change.
PARSER_VERSION = 1


def _count(value) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


@dataclass
class HubRepo:
    """The fields of a listing item or a ``model_info`` answer that the registry uses."""

    id: str
    sha: str | None = None
    last_modified: datetime | None = None
    created_at: datetime | None = None
    tags: list[str] = field(default_factory=list)
    card: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    gated: bool = False
    blobs: tuple[dict[str, int], dict[str, str]] | None = None  # (sizes, sha256) when already known
    downloads: int = 0

    @property
    def author(self) -> str:
        return self.id.split("/", 1)[0]

    @property
    def name(self) -> str:
        return self.id.split("/", 1)[-1]

    @classmethod
    def from_listing(cls, item: dict) -> HubRepo:
        siblings, sha, card, cfg = item.get("siblings"), item.get("sha"), item.get("cardData"), item.get("config")
        if not isinstance(siblings, list):
            siblings = []
        return cls(
            id=item["id"],
            sha=sha if isinstance(sha, str) else None,
            last_modified=parse_dt(item.get("lastModified")),
            created_at=parse_dt(item.get("createdAt")),
            tags=[t for t in item.get("tags") or [] if isinstance(t, str)],
            card=card if isinstance(card, dict) else {},
            config=cfg if isinstance(cfg, dict) else {},
            files=[s["rfilename"] for s in siblings if isinstance(s, dict) and isinstance(s.get("rfilename"), str)],
            gated=item.get("gated") not in (None, False, "false"),
            downloads=_count(item.get("downloads")),
        )

    @classmethod
    def from_info(cls, info) -> HubRepo:
        from crawler.hf.inspect import blobs_of

        card = info.card_data.to_dict() if getattr(info, "card_data", None) is not None else {}
        return cls(
            id=info.id,
            sha=info.sha,
            last_modified=info.last_modified,
            created_at=info.created_at,
            tags=list(info.tags or []),
            card=card,
            config=info.config or {},
            files=[s.rfilename for s in info.siblings or []],
            gated=info.gated not in (None, False),
            blobs=blobs_of(info) if any(s.lfs for s in info.siblings or []) else None,
            downloads=_count(getattr(info, "downloads", 0)),
        )


def lineage(card: dict, tags: list[str]) -> tuple[list[str], str | None]:
    """(base repos, relation). The card's ``base_model`` is a string or a list; the Hub also writes tags
    ``base_model:<repo>`` and ``base_model:<relation>:<repo>``."""
    bases: list[str] = []
    value = card.get("base_model")
    for b in value if isinstance(value, list) else [value]:
        if isinstance(b, str) and "/" in b and b not in bases:
            bases.append(b.strip())
    relation = card.get("base_model_relation") if isinstance(card.get("base_model_relation"), str) else None
    for tag in tags:
        if not tag.startswith("base_model:"):
            continue
        parts = tag.split(":", 2)
        repo = parts[-1]
        if len(parts) == 3 and relation is None:
            relation = parts[1]
        if "/" in repo and repo not in bases:
            bases.append(repo)
    return bases, relation


def _class_name(cfg: dict) -> str | None:
    diffusers = cfg.get("diffusers")
    if not isinstance(diffusers, dict):
        diffusers = {}
    name = diffusers.get("_class_name") or diffusers.get("class_name")
    return name if isinstance(name, str) else None


def _hints(repo: HubRepo) -> tuple[list[str], str | None]:
    """Inpainting hints (tags, pipeline class) and the family a pipeline class suggests."""
    cfg = config()
    hints = [f'tagged "{t}"' for t in repo.tags if t in cfg["inpaint_hint_tags"]]
    cls = _class_name(repo.config)
    if cls and ("Inpaint" in cls or "Fill" in cls):
        hints.append(f"diffusers pipeline class {cls}")
    return hints, cfg["diffusers_classes"].get(cls) if cls else None


def _family(bases: list[str], arch: str | None, class_family: str | None) -> tuple[str | None, str | None]:
    """(family, note). Lineage names the family (Pony, Illustrious, ...), shapes prove the architecture: when
    they disagree the shapes win."""
    lineage_family = next((f for f in map(families.family_for_hf_repo, bases) if f), None)
    if lineage_family:
        if arch is None or families.agrees_with_tensors(lineage_family, arch):
            return lineage_family, None
        return arch, f"declares base {bases[0]} but its tensor shapes are {arch}"
    return arch or class_family, None


def _detect(repo: HubRepo, ckpt: Checkpoint, dedicated: bool, hints: list[str]) -> detect.Detection:
    proof = ckpt.proof
    if proof.variant and proof.variant != "unknown":
        is_inpaint = proof.variant in ("inpaint", "fill")
        evidence = [f"{proof.how}: {proof.variant}"]
        if hints and not is_inpaint:
            evidence.append(f"{hints[0]}, but the UNet is not an inpainting UNet (a hint only)")
        return detect.Detection(is_inpaint, 0.99 if is_inpaint else 0.0, evidence)
    names = [f.rsplit("/", 1)[-1] for f in ckpt.files]
    found = detect.detect_version(
        version_name=ckpt.key if ckpt.key != "diffusers" else None, base_model_type=None, file_names=names,
        model_name=repo.name, model_tags=repo.tags, model_is_dedicated=dedicated,
    )  # fmt: skip
    if hints:  # tags and class names alone stay below the threshold: they need a name to agree
        miss = (1 - found.confidence) * (1 - detect.TAG)
        found = detect.Detection(1 - miss >= detect.THRESHOLD, round(1 - miss, 4), found.evidence + hints)
    if proof.problem:
        found.evidence.append(f"no proof from files: {proof.problem}")
    return found


def _version_name(key: str) -> str:
    """ "realmix_v2-inpainting.safetensors" -> "realmix_v2-inpainting", so that it pairs with "realmix_v2"."""
    return key.rsplit(".", 1)[0] if key != "diffusers" else key


def parse_repo(repo: HubRepo, seen: Inspection, endpoint: str = settings.HUB) -> ParsedModel:
    model_id = f"hf:{repo.id}"
    bases, relation = lineage(repo.card, repo.tags)
    hints, class_family = _hints(repo)
    dedicated = not any(
        detect.version_has_own_signal(c.key, None, c.files) or c.proof.variant in ("inpaint", "fill")
        for c in seen.checkpoints
    )
    versions, files, inpaint = [], [], set()
    for position, ckpt in enumerate(seen.checkpoints):
        vid = f"{model_id}@{ckpt.key}"
        found = _detect(repo, ckpt, dedicated, hints)
        family, note = _family(bases, ckpt.proof.arch, class_family)
        evidence = found.evidence + ([note] if note else [])
        if seen.unavailable:
            evidence.append(f"files not readable: {seen.unavailable}")
        if found.is_inpainting:
            inpaint.add(vid)
        versions.append({
            "id": vid, "model_id": model_id, "source_id": repo.sha or "", "name": _version_name(ckpt.key),
            "base_model": bases[0] if bases else None, "base_model_type": relation, "family": family,
            "published_at": repo.created_at, "updated_at": repo.last_modified, "position": position,
            "is_inpainting": found.is_inpainting, "inpaint_confidence": found.confidence,
            "inpaint_evidence": json.dumps(evidence), "download_url": None,
        })  # fmt: skip
        for path in ckpt.files:
            size = seen.sizes.get(path)
            files.append({
                "id": f"{model_id}/{path}", "version_id": vid, "name": path,
                "size_kb": size / 1024 if size is not None else None, "type": "Model",
                "format": "SafeTensor" if path.endswith(".safetensors") else "PickleTensor", "fp": None,
                "primary": path == ckpt.files[0], "sha256": seen.sha256.get(path), "autov1": None, "autov2": None,
                "autov3": None, "crc32": None, "blake3": None,
                "download_url": settings.Sites(hf_endpoint=endpoint).hub_file(repo.id, path),
            })  # fmt: skip
    normal = [v for v in versions if not v["is_inpainting"]] or versions
    model = {
        "id": model_id, "source": "hf", "source_id": repo.id, "name": repo.name,
        "name_norm": normalize_name(repo.name), "type": "Checkpoint", "creator": repo.author,
        "tags": json.dumps(repo.tags), "nsfw": False,
        "mode": ("Gated" if "gated" in seen.unavailable else "Unavailable") if seen.unavailable else None,
        "base_model": bases[0] if bases else None,
        "family": normal[0]["family"] if normal else _family(bases, None, class_family)[0],
        "is_inpainting": bool(versions) and len(inpaint) == len(versions), "has_inpainting": bool(inpaint),
        "updated_at": repo.last_modified, "content_hash": _revision_key(repo.sha), "downloads": repo.downloads,
    }  # fmt: skip
    return ParsedModel(model, versions, files, inpaint, links.within_model(model, versions))


def queries() -> list[tuple[str, list[tuple[str, str]]]]:
    """(label, query parameters) for each listing the crawl walks, in a fixed order (the resume cursor
    counts them)."""
    cfg = config()
    common = [("sort", "lastModified"), ("direction", "-1"), ("limit", str(PAGE_SIZE))]
    common += [("expand", e) for e in cfg["expand"]]
    out = []
    for fam in families.all_families():
        for base in fam["hf_base_repos"]:
            for relation in cfg["relations"]:
                out.append((f"{relation}s of {base}", [("filter", f"base_model:{relation}:{base}"), *common]))
    for extra in cfg["extra_queries"]:
        params = [("filter", f) for f in extra["filter"]]
        if extra.get("pipeline_tag"):
            params.append(("pipeline_tag", extra["pipeline_tag"]))
        out.append((extra["label"], params + common))
    return out


@dataclass
class HfCrawlSummary(registry.RunSummary):
    listed: int = 0
    inspected: int = 0  # new or changed repos whose files were read
    skipped: int = 0  # adapters, ControlNets, ... listed under a base
    unavailable: int = 0  # gated / deleted repos, recorded
    requests: int = 0
    officials_alive: int = 0
    officials_dead: list[str] = field(default_factory=list)
    route_files_missing: list[str] = field(default_factory=list)  # route files (data/routes.json) gone from the Hub
    same_files: int = 0


class _Cursor(TypedDict):
    """A Hub crawl's resume point, stored as JSON in its run's cursor: the listing (index into ``queries()``,
    and its label to notice a changed list) and the next page's URL within it."""

    query: int
    next: str | None
    label: NotRequired[str]


def _revision_key(sha: str | None) -> str:
    return f"{sha}/{PARSER_VERSION}" if sha else ""


def _skip(repo: HubRepo) -> bool:
    skip = set(config()["skip_tags"])
    return any(t in skip for t in repo.tags)


def crawl(
    reg: Registry,
    *,
    mode: str = "full",
    endpoint: str | None = None,
    token: str | None = None,
    policy: RetryPolicy | None = None,
    max_pages: int | None = None,
    check_officials: bool = True,
    on_page: Callable[[HfCrawlSummary], None] | None = None,
    on_retry: Callable[[str], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> HfCrawlSummary:
    """Crawl the Hub. ``incremental`` stops each listing (newest change first) at the last successful run's
    start. A killed or failed run resumes at its last committed page."""
    since = None
    if mode == "incremental":
        last = reg.last_successful_run("hf")
        since = last.started_at if last else None
    started = reg.start_run("hf", mode, since=since)
    run = started.run
    if run.since is not None:
        since = run.since if run.since.tzinfo else run.since.replace(tzinfo=UTC)
    summary = HfCrawlSummary(run_id=started.run_id, mode=mode, resumed=started.resumed)
    listings = queries()
    state: _Cursor = json.loads(run.cursor) if run.cursor else {"query": 0, "next": None}
    saved = state.get("label")
    if saved is not None and (state["query"] >= len(listings) or listings[state["query"]][0] != saved):
        state = {"query": 0, "next": None}  # the bundled query list changed since the cursor was saved
    hub = Hub(endpoint, token, policy=policy, on_retry=on_retry, sleep=sleep)
    try:
        pages_left = max_pages
        qi, next_url = state["query"], state["next"]
        while qi < len(listings) and pages_left != 0:
            _label, params = listings[qi]
            page = hub.list_page(next_url or "/api/models", None if next_url else params)
            summary.requests += 1
            repos = [HubRepo.from_listing(i) for i in page.items]
            stop = since is not None and any(r.last_modified and r.last_modified < since for r in repos)
            if since is not None:
                repos = [r for r in repos if r.last_modified is None or r.last_modified >= since]
            summary.listed += len(repos)
            wanted = [r for r in repos if not _skip(r)]
            summary.skipped += len(repos) - len(wanted)
            stored = reg.content_hashes([f"hf:{r.id}" for r in wanted])
            parsed = {}
            for repo in wanted:
                if repo.sha and stored.get(f"hf:{repo.id}") == _revision_key(repo.sha):
                    continue  # same commit as last time: nothing to read
                seen = inspect(hub, repo.id, repo.sha or "main", repo.files, known_blobs=repo.blobs)
                summary.inspected += 1
                summary.requests += seen.requests
                summary.unavailable += bool(seen.unavailable)
                for url, reason in seen.errors:
                    summary.note_error("hf", url, reason)
                parsed[f"hf:{repo.id}"] = parse_repo(repo, seen, hub.endpoint)
            cursor: _Cursor
            if page.next_url and not stop:
                cursor = {"query": qi, "next": page.next_url}
            else:
                cursor = {"query": qi + 1, "next": None}
            if cursor["query"] < len(listings):
                cursor["label"] = listings[cursor["query"]][0]
            stored_page = reg.store_page(parsed, run.id, json.dumps(cursor))
            summary.pages += 1
            summary.written += stored_page.written
            summary.new_inpainting += stored_page.new_inpainting
            summary.retries = hub.retries
            qi, next_url = cursor["query"], cursor["next"]
            if pages_left is not None:
                pages_left -= 1
            if on_page:
                on_page(summary)
        if qi < len(listings):  # stopped by max_pages: leave the run resumable
            summary.status, summary.note = "stopped", registry.stopped_note(summary.pages)
            reg.finish_run(run, "stopped", None, summary)
            return summary
        if check_officials:
            on_error = lambda url, reason: summary.note_error("hf", url, reason)  # noqa: E731
            checks = officials.check_all(reg, hub, on_error)
            summary.officials_alive = sum(c.alive and c.matches for c in checks)
            summary.officials_dead = sorted({c.repo for c in checks if not c.alive})
            route_checks = officials.check_routes(reg, hub, on_error)
            summary.route_files_missing = sorted(f"{c.repo}/{c.file}" for c in route_checks if not c.file_found)
        resolve_lineage(reg)
        summary.same_files = reg.link_same_files()
        summary.new_links = links.link_sibling_models(reg)
        summary.retries = hub.retries
        summary.status = "ok"
        reg.finish_run(run, "ok", None, summary)
    except BaseException as exc:
        reg.record_run_failure(run, summary, exc)
        raise
    finally:
        hub.close()
    return summary


def resolve_lineage(reg: Registry, max_depth: int = 8) -> int:
    """Families through chains of Hub repos (base -> fine-tune -> merge of it): a repo whose declared base is
    another crawled repo takes that repo's family when its own is unknown, or when it is the base architecture
    of a more specific one (an SDXL-shaped merge of a Pony fine-tune is Pony). Returns rows changed."""
    known, parents = reg.hf_families()
    before = {model_id: fam for model_id, (_, fam) in known.items()}
    family = dict(before)
    base = {model_id: f"hf:{repo}" for model_id, (repo, _) in known.items() if repo}
    for _ in range(max_depth):
        moved = False
        for model_id, parent_id in base.items():
            theirs, ours = family.get(parent_id), family.get(model_id)
            if theirs and theirs != ours and (ours is None or parents.get(theirs) == ours):
                family[model_id], moved = theirs, True
        if not moved:
            break
    changed = {m: f for m, f in family.items() if f is not None and f != before[m]}  # moves only set families
    reg.set_hf_families(changed)
    return len(changed)


def fetch_one(reg: Registry, repo_id: str, *, endpoint: str | None = None, token: str | None = None,
              policy: RetryPolicy | None = None) -> str:  # fmt: skip
    """Look one repo up live and store it (``lookup`` of a repo the crawl has not seen); returns its model id."""
    with Hub(endpoint, token, policy=policy) as hub:
        info = hub.model_info(repo_id, files_metadata=True)
        repo = HubRepo.from_info(info)
        seen = inspect(hub, repo.id, repo.sha or "main", repo.files, known_blobs=repo.blobs)
        parsed = parse_repo(repo, seen, hub.endpoint)
    reg.store_page({parsed.model["id"]: parsed}, None, None)
    resolve_lineage(reg)
    reg.link_same_files(hf_model=parsed.model["id"])  # lookup's path: not a join over every file
    return parsed.model["id"]
