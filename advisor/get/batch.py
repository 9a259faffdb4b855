"""`scan --get`: `get` for every checkpoint of a UI folder. Every plan is made first, so the disk the whole batch
needs is known before a byte is fetched; a file several models share (a family's route: the Fooocus patch for
every SDXL fine-tune) is fetched once; one failure is reported and the rest go on; run again, what is in place
is found in place and an interrupted download resumes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from advisor.build.batch import disk_for
from advisor.build.builder import one_batch
from advisor.get.plan import GetPlan, plan_get
from advisor.get.result import Placement
from advisor.get.run import run_get
from advisor.local import ScanResult
from data.errors import InpaintAdvisorError

# a partner already there: nothing to get (scan found it on disk, or the model inpaints itself)
_IN_PLACE = ("local", "built", "already-inpainting")


@dataclass
class GetItem:
    path: str  # the scanned checkpoint
    status: str  # planned | done | skipped | failed
    answer: str = ""  # what get acts on (a route's name, "official", ...)
    kind: str = ""
    files: list[str] = field(default_factory=list)  # destinations
    reason: str = ""


@dataclass
class GetBatch:
    root: str
    ui: str
    items: list[GetItem] = field(default_factory=list)
    files: int = 0  # distinct files to place, each once however many models need it
    disk_needed: int = 0  # for what is still to fetch or build, before it started
    needs: list[str] = field(default_factory=list)  # custom nodes or extensions, by repository
    dry_run: bool = False

    def count(self, status: str) -> int:
        return sum(1 for i in self.items if i.status == status)

    def __json__(self) -> dict:
        counts = {status: self.count(status) for status in ("done", "skipped", "failed")}
        return {"root": self.root, "ui": self.ui, "items": self.items, "files": self.files,
                "disk_needed": self.disk_needed, "needs": self.needs, "dry_run": self.dry_run, **counts}  # fmt: skip


def get_folder(scan: ScanResult, *, ui: str | None = None, family: str | None = None, limit: int | None = None,
               db: str | None = None, offline: bool = False, dry_run: bool = False,
               on_item: Callable[[GetItem], None] | None = None, progress=None) -> GetBatch:  # fmt: skip
    """Plan `get` for every scanned checkpoint that lacks its partner, then (unless ``dry_run``) run the plans
    one by one, each shared file once."""
    wanted = [c for c in scan.checkpoints if c.partner is not None and c.partner.kind not in _IN_PLACE
              and c.partner.kind != "none" and (family is None or c.family == family)]  # fmt: skip
    wanted = wanted[:limit] if limit is not None else wanted
    batch = GetBatch(scan.root, ui or scan.layout, dry_run=dry_run)
    plans: dict[str, GetPlan | Exception] = {}
    for c in wanted:
        try:
            plans[c.path] = plan_get(c.path, root=scan.root, ui=ui, db=db, offline=offline)
        except Exception as exc:  # noqa: BLE001 - a lookup, registry or UI problem is this item's, not the batch's
            plans[c.path] = exc
    _share(plans, batch)
    with one_batch():  # a build's A or C, failed for one model, is not fetched again for the next
        for c in wanted:
            item = _run_one(c.path, plans[c.path], dry_run, progress)
            batch.items.append(item)
            if on_item:
                on_item(item)
    return batch


def _share(plans: dict[str, GetPlan | Exception], batch: GetBatch) -> None:
    """Count each destination once: the disk needed, and (for the run) every later plan's copy of a shared file
    points at the first one's, so the second model finds it placed."""
    first: dict[str, Placement] = {}
    built = []
    for plan in plans.values():
        if isinstance(plan, Exception):
            continue
        r = plan.result
        if r.build is not None and plan.build is not None:
            built.append(r.build)
        for i, p in enumerate(r.files):
            if p.destination in first:
                r.files[i] = first[p.destination]  # the same Placement: placed once, found placed after
            else:
                first[p.destination] = p
        batch.needs += [n for n in r.needs if n not in batch.needs]
    batch.files = len(first)
    fetched = sum(p.size or p.approx_size or 0 for p in first.values() if p.state != "present")
    batch.disk_needed = disk_for(built) + fetched


def _run_one(path: str, plan: GetPlan | Exception, dry_run: bool, progress) -> GetItem:
    if isinstance(plan, Exception):
        return GetItem(path, "failed", reason=str(plan) or type(plan).__name__)
    r = plan.result
    item = GetItem(path, "planned", r.answer.name, r.answer.kind, [p.destination for p in r.files], r.answer.reason)
    if r.build is not None and r.build.output is not None and plan.build is None:
        item.files.append(r.build.output.path)
    if r.action in ("ready", "nothing") and all(p.state == "present" for p in r.files):
        item.status, item.reason = "skipped", "already in place"
        if not dry_run:
            run_get(plan)  # nothing to fetch: its workflow is written all the same
        return item
    if dry_run:
        return item
    try:
        done = run_get(plan, progress=progress)
    except InpaintAdvisorError as exc:
        item.status, item.reason = "failed", str(exc)
        return item
    except Exception as exc:  # noqa: BLE001 - one failure does not stop the batch
        item.status, item.reason = "failed", f"{type(exc).__name__}: {exc}"
        return item
    item.status = "done"
    if done.build is not None and done.build.output is not None:
        item.files = [*(p.destination for p in done.files), done.build.output.path]
    item.files = [str(Path(f)) for f in item.files]
    return item
