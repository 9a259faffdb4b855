"""Keep the official checkpoints in data/ true: is each mirror still there, with the file, size and sha256 we
recommend? Repos do vanish (runwayml in 2024, Stability's SD 2 repos in November 2025); `lookup` moves its
recommendation to the first mirror the last check found alive."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from crawler import families, registry
from crawler.hf.hub import Hub, RepoUnavailable
from crawler.hf.inspect import blobs_of
from crawler.http import ApiError
from crawler.registry import OfficialCheck, RouteCheck

if TYPE_CHECKING:
    from crawler.registry import Registry


OnError = Callable[[str, str], None]  # (URL, reason) of a request that failed


def check_mirror(hub: Hub, family: str, role: str, repo: str, spec: dict,
                 on_error: OnError | None = None) -> OfficialCheck | None:  # fmt: skip
    """None when the Hub could not be asked (a transient error, told to ``on_error``): the previous check
    stays."""
    wanted = spec.get("file")

    def check(**found) -> OfficialCheck:
        return OfficialCheck(id=f"{family}:{role}:{repo}", family=family, role=role, repo=repo, file=wanted,
                             checked_at=registry.utcnow(), **found)  # fmt: skip

    try:
        info = hub.model_info(repo, files_metadata=True)
    except RepoUnavailable as exc:
        return check(alive=False, detail=f"HTTP {exc.status}: {exc.reason}")
    except ApiError as exc:
        if on_error:
            on_error(exc.url, f"HTTP {exc.status}: {exc.detail}; the previous check stays")
        return None
    if wanted is None:  # a diffusers repo recommended as a whole
        found = "model_index.json" in {s.rfilename for s in info.siblings or []}
        return check(alive=True, file_found=found, matches=found,
                     detail="diffusers folder present" if found else "no model_index.json")  # fmt: skip
    return check(alive=True, **_file_facts(info, wanted, spec))


def _file_facts(info, wanted: str, spec: dict) -> dict:
    """Is ``wanted`` in the repo the Hub described, with the size and sha256 ``spec`` expects (where it says)?"""
    sizes, hashes = blobs_of(info)
    found = wanted in {s.rfilename for s in info.siblings or []}
    size, sha = sizes.get(wanted), (hashes.get(wanted) or "").lower() or None
    problems = []
    if not found:
        problems.append(f"{wanted} is gone")
    if found and spec.get("size") and size is not None and size != spec["size"]:
        problems.append(f"size {size:,} B, expected {spec['size']:,} B")
    if found and spec.get("sha256") and sha and sha != spec["sha256"].lower():
        problems.append(f"sha256 {sha[:12]}…, expected {spec['sha256'][:12]}…")
    detail = "; ".join(problems) or ("file, size and sha256 as expected" if spec.get("sha256") else "file present")
    if getattr(info, "gated", False):
        detail += " (gated: accept the licence on the Hub)"
    return {"file_found": found, "size": size, "sha256": sha, "matches": found and not problems, "detail": detail}


def check_all(reg: Registry, hub: Hub, on_error: OnError | None = None) -> list[OfficialCheck]:
    checks = []
    for fam in families.all_families():
        for role in ("inpaint", "base"):
            spec = fam.get(role) or {}
            for mirror in spec.get("mirrors", []):
                check = check_mirror(hub, fam["id"], role, mirror["repo"], spec, on_error)
                if check is not None:
                    checks.append(check)
    reg.save_official_checks(checks)
    return checks


def check_routes(reg: Registry, hub: Hub, on_error: OnError | None = None) -> list[RouteCheck]:
    """The same check for every Hub file of the inpainting routes (data/routes.json), one Hub call per repo."""
    from data import load

    infos: dict[str, object] = {}
    checks = []
    for route in load("routes")["routes"]:
        for spec in route["files"]:
            repo, wanted = spec["repo"], spec["file"]
            if repo not in infos:
                try:
                    infos[repo] = hub.model_info(repo, files_metadata=True)
                except RepoUnavailable as exc:
                    infos[repo] = exc
                except ApiError as exc:
                    infos[repo] = None  # not asked: the previous check stays
                    if on_error:
                        on_error(exc.url, f"HTTP {exc.status}: {exc.detail}; the previous check stays")
            info = infos[repo]
            found: dict[str, Any]
            if isinstance(info, RepoUnavailable):
                found = {"alive": False, "detail": f"HTTP {info.status}: {info.reason}"}
            elif info is not None:
                found = {"alive": True, **_file_facts(info, wanted, spec)}
            else:
                continue
            checks.append(RouteCheck(id=f"{route['id']}:{repo}/{wanted}", route=route["id"], repo=repo, file=wanted,
                                     checked_at=registry.utcnow(), **found))  # fmt: skip
    reg.save_route_checks(checks)
    return checks
