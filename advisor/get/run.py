"""Doing a `get` plan: each file into its UI folder, through build's download engine (resumable, checked
against its pinned SHA256, under its final name only when complete), or linked from the build cache where a
build fetched it before; a build through `build` itself."""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from collections.abc import Callable
from pathlib import Path

from advisor.build.builder import BuildError, failed_earlier, run_build
from advisor.build.download import DownloadError, Source, fetch
from advisor.get.plan import GetPlan
from advisor.get.result import GetError, GetResult, Placement
from merge import hashing
from merge.header import CheckpointError

Progress = Callable[[str, int, int | None], None]  # (label, bytes done, total)


def run_get(plan: GetPlan, *, progress: Progress | None = None,
            merge_progress: Callable[[int], None] | None = None) -> GetResult:  # fmt: skip
    """Fetch what ``plan`` lists and run its build; GetError (nothing under a final name) when a file cannot be
    had. Files already placed stay placed: the same command again goes on from there."""
    result = plan.result
    if result.action in ("ready", "nothing"):
        _workflow(result)
        return result
    taken = next((p for p in result.files if p.state == "other-file"), None)
    if taken is not None:
        raise GetError(f"{taken.destination} exists and is another file: not replaced (move it away and run "
                       "again)", "exists")  # fmt: skip
    for p in result.files:
        if p.state in ("missing", "partial"):  # not placed yet (a batch shares one Placement between models)
            _place(p, plan.offline, progress, result.warnings)
    if plan.build is not None:
        try:
            result.build = run_build(plan.build, progress=progress, merge_progress=merge_progress)
        except BuildError as exc:
            raise GetError(str(exc), exc.code) from None
        result.warnings += result.build.warnings
        result.checkpoint = result.build.output.path if result.build.output else result.checkpoint
        if not result.build.verified:
            raise GetError(f"the build of {result.answer.name} is not verified: {result.build.reason}", "build-failed")
    _workflow(result)
    result.action = "ready"
    return result


def _workflow(result: GetResult) -> None:
    if result.workflow is not None and result.workflow_path is not None:
        _write_workflow(Path(result.workflow_path), result.workflow, result.warnings)


def _write_workflow(path: Path, graph: dict, warnings: list[str]) -> None:
    """Whole or not at all (a temporary file renamed); ours to replace, as the same command writes it again."""
    import json

    staged = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        staged.write_text(json.dumps(graph, indent=1) + "\n", encoding="utf-8")
        os.replace(staged, path)
    except OSError as exc:  # the files are in place: a workflow that cannot be written is a warning
        warnings.append(f"the workflow could not be written to {path} ({exc.strerror or exc})")
    finally:
        with contextlib.suppress(OSError):
            staged.unlink()


def _place(p: Placement, offline: bool, progress: Progress | None, warnings: list[str]) -> None:
    if p._failed is not None:  # a file two models of a batch need, which failed for the first
        raise GetError(failed_earlier(p._failed[0]), p._failed[1])
    try:
        _place_once(p, offline, progress, warnings)
    except GetError as exc:
        if exc.code != "exists":  # a name taken says nothing of the next model's folder
            p._failed = (str(exc), exc.code)
        raise


def _place_once(p: Placement, offline: bool, progress: Progress | None, warnings: list[str]) -> None:
    folder = Path(p.folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GetError(f"{folder}: cannot be made ({exc.strerror or exc})", "os-error") from None
    if _from_cache(p):
        return
    if offline:
        raise GetError(f"{p.label}: {p.name} is neither in {p.folder} nor in the cache, and the run is offline",
                       "offline")  # fmt: skip
    label = f"{p.label}: {p.name}" if p.label else p.name
    try:
        got = fetch(
            Source(
                p._fetch_url, name=p.name, sha256=p.sha256, size=p.size, token=p._token, label=p.label, keep_name=True
            ),
            folder,
            progress=(lambda done, total: progress(label, done, total)) if progress else None,
        )
    except DownloadError as exc:
        raise GetError(str(exc), exc.code) from None
    p.name, p.path, p.bytes, p.verified, p.size = got.path.name, str(got.path), got.bytes, got.verified, got.size
    p.state = "present" if got.reused else "fetched"
    if p.sha256 is None:
        p.sha256 = got.sha256
        warnings.append(f"{p.name}: no SHA256 is pinned for it; its SHA256 is recorded as {got.sha256} "
                        "(unverified: compare it with the publisher's)")  # fmt: skip
    warnings.extend(got.warnings)


def _from_cache(p: Placement) -> bool:
    """The pinned file where a build left it in the cache: linked into the folder (copied across filesystems),
    never over another file. False when the cache does not hold it."""
    if p.sha256 is None:
        return False  # an unpinned file in the cache cannot be told from another of the same name
    for cached in map(Path, p._cached):
        try:
            if not cached.is_file():
                continue
            before = cached.stat()
            sha = (hashing.cached(cached, autov3=False) or hashing.file_hashes(cached, autov3=False)).sha256
        except (OSError, CheckpointError):
            continue
        if sha.upper() != p.sha256:
            continue
        target = Path(p.folder) / p.name
        try:
            placed = _link_or_copy(cached, target, before, p.sha256)
        except FileExistsError:
            raise GetError(f"{target} exists and is another file: not replaced (move it away and run again)",
                           "exists") from None  # fmt: skip
        except OSError:
            continue  # the cache's copy cannot be used: fetched instead
        if not placed:
            continue  # it changed after it was hashed: fetched instead
        p.path, p.state, p.verified = str(target), "copied", True
        return True
    return False


def _same_file(st: os.stat_result, before: os.stat_result) -> bool:
    """The inode hashed, unchanged (a link changes the ctime, so it is not compared)."""
    return (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns) == (before.st_ino, before.st_dev, before.st_size,
                                                                  before.st_mtime_ns)  # fmt: skip


def _link_or_copy(source: Path, target: Path, before: os.stat_result, sha256: str) -> bool:
    """``target`` as a hard link to ``source`` (still the file that was hashed), or a copy hashed as it is
    written, whole before it takes the name; never over a file already there (FileExistsError). False, and
    nothing placed, when the bytes are no longer the ones hashed."""
    try:
        os.link(source, target)
    except FileExistsError:
        raise
    except OSError:
        pass  # another filesystem, or links not allowed: copied
    else:
        if _same_file(target.stat(), before):
            return True
        target.unlink()
        return False
    staged = target.with_name(f".inpaint-advisor-{uuid.uuid4().hex[:12]}.partial")
    try:
        digest = hashlib.sha256()
        with open(source, "rb") as src, open(staged, "xb") as dst:
            while chunk := src.read(1 << 20):
                digest.update(chunk)
                dst.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())
        if digest.hexdigest().upper() != sha256:
            return False
        os.link(staged, target)  # not os.replace: a file that appeared meanwhile is not overwritten
        return True
    finally:
        with contextlib.suppress(OSError):
            staged.unlink()
