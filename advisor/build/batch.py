"""Batch builds: every missing partner of a scan, fetched or built beside its model, or the registry's most
downloaded models without an inpainting release (`build --missing`), resumably.

Each item is one `build` of a scanned checkpoint into the folder where it lives (its output,
``<stem>-inpainting.safetensors``, is then listed beside it by the UI). Run again, a batch skips what is done
(a recorded build answers "already-built"; an output already there is left alone) and resumes the download
that was interrupted; one failure is reported and the rest go on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from advisor.build.builder import BuildError, BuildResult, one_batch, plan_build, run_build
from advisor.local import ScanResult

NEEDS_WORK = ("own-release", "sibling-release", "community-release", "official", "build")


@dataclass
class BatchItem:
    path: str  # the scanned checkpoint
    status: str  # done | skipped | failed | planned
    action: str | None = None  # build's action (built, downloaded-release, already-built, ...)
    output: str | None = None
    reason: str = ""
    disk_needed: int = 0


@dataclass
class BatchResult:
    items: list[BatchItem] = field(default_factory=list)
    disk_needed: int = 0  # for what is still to do, before it started
    dry_run: bool = False

    def count(self, status: str) -> int:
        return sum(1 for i in self.items if i.status == status)

    def __json__(self) -> dict:
        counts = {status: self.count(status) for status in ("done", "skipped", "failed")}
        return {"items": self.items, "disk_needed": self.disk_needed, "dry_run": self.dry_run, **counts}


def todo(scans: list[ScanResult], *, family: str | None = None, limit: int | None = None) -> list[str]:
    """The scanned checkpoints whose partner still has to be fetched or built (built too where a route ranks
    first: a batch build is asked for)."""
    paths = [c.path for r in scans for c in r.checkpoints if c.partner is not None
             and (c.partner.kind in NEEDS_WORK or c.partner.buildable) and (family is None or c.family == family)]
    return paths[:limit] if limit is not None else paths


def missing(db: str | None, *, family: str | None = None, min_downloads: int = 0, limit: int = 20) -> list[str]:
    """Queries for the registry's most downloaded models that have no inpainting release, in families a build
    can serve (``family`` alone if given)."""
    from crawler import families, registry, sources
    from merge.layout import MERGEABLE

    buildable = [f["id"] for f in families.all_families()
                 if (families.official_target(f["id"]) or {}).get("id") in MERGEABLE]  # an add-difference route
    wanted = [family] if family else buildable
    with contextlib.closing(registry.open(db, "lookup")) as reader:
        found = reader.without_inpainting(wanted, min_downloads=min_downloads, limit=limit)
    return [sources.get(m.source).query(m.id) for m, _ in found if not sources.get(m.source).is_official(m.id)]


def disk_for(results: Iterable[BuildResult]) -> int:
    """The disk that builds need together: each their own (B, the output), A's and C's downloads once, which
    every build of a family shares."""
    own, shared = 0, {}
    for r in results:
        own += r.disk_needed - sum(r.shared_disk.values())
        shared.update(r.shared_disk)
    return own + sum(shared.values())


def run_batch(paths: list[str], *, db: str | None = None, dry_run: bool = False, offline: bool = False,
              out: str | Path | None = None, on_item: Callable[[BatchItem], None] | None = None,
              **build_options) -> BatchResult:  # fmt: skip
    """Plan every item (the disk they need is known before the first byte), then build them one by one:
    each into ``out``, or (scanned files) into its model's folder."""
    result = BatchResult(dry_run=dry_run)
    plans: dict[str, BuildResult | BuildError] = {}
    where = {p: Path(out) if out is not None else Path(p).parent for p in paths}
    for path in paths:
        try:
            plans[path] = plan_build(path, out=where[path], db=db, offline=offline, **build_options).result
        except BuildError as exc:
            plans[path] = exc
        except Exception as exc:  # noqa: BLE001 - a lookup or registry error is this item's, not the batch's
            plans[path] = BuildError(str(exc))
    result.disk_needed = disk_for(p for p in plans.values() if isinstance(p, BuildResult))
    with one_batch():  # the family's A or C, failed for one model, is not fetched again for the next
        for path in paths:
            plan = plans[path]
            item = BatchItem(path, "planned")
            if isinstance(plan, BuildError):
                item.status, item.reason = "failed", str(plan)
            elif plan.action in ("already-built", "already-inpainting"):
                item.status, item.action, item.reason = "skipped", plan.action, plan.reason
                item.output = plan.output.path if plan.output else None
            elif dry_run:
                item.reason, item.disk_needed = plan.reason, plan.disk_needed
            else:
                item = _build_one(path, where[path], db, offline, build_options)
            result.items.append(item)
            if on_item:
                on_item(item)
    return result


def _build_one(path: str, out: Path, db, offline: bool, build_options: dict) -> BatchItem:
    try:  # planned again: an item built before this one may have changed what it needs (a pair prepared)
        done = run_build(plan_build(path, out=out, db=db, offline=offline, **build_options))
    except BuildError as exc:
        if exc.code == "exists":  # made before, though not recorded (no registry then): left as it is
            return BatchItem(path, "skipped", reason=str(exc))
        return BatchItem(path, "failed", reason=str(exc))
    except Exception as exc:  # noqa: BLE001 - one failure does not stop the batch
        return BatchItem(path, "failed", reason=f"{type(exc).__name__}: {exc}")
    status = "done" if done.verified else "failed"
    return BatchItem(path, status, done.action, done.output.path if done.output else None,
                     done.reason if done.verified else "; ".join(done.warnings) or "unverified")  # fmt: skip
