"""What the cache holds for builds, and clearing it: prepared pairs (merge.prepared) and fetched files (A, C and
fine-tunes, ``files_dir``). Hashes and download records stay: they are small and keyed by what they
describe, so a deleted file only makes them unused.

Clearing never pulls a file from under a running build: it takes every download lock and every pair's lock
without waiting, leaves a pair while a build holds it (merge.prepared.using), and leaves (and reports) what
another process holds. Partial files (interrupted downloads, unfinished pairs, the hidden files of merges) are
listed with whether their owner still runs; clearing removes those whose owner is gone, never a live one.
"""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import FileLock, Timeout

from advisor.local.base_distance import kept_dir
from advisor.local.cached_files import files_dir
from advisor.safety import safe_filename
from merge import hashing, portable, prepared
from merge.engine import partial_owner

if TYPE_CHECKING:
    from crawler.sources import Download

WHAT = ("all", "prepared", "files", "partial")
_DOWNLOAD_PARTIAL = ".inpaint-advisor-*.partial"  # advisor.build.download's hidden file (its sidecar adds .json)
_MERGE_PARTIAL = ".*.partial-*"  # a merge's hidden output (SafetensorsWriter), a pair's record being written


@dataclass
class PairEntry:
    key: str
    family: str
    inpaint: str  # A's file name
    base: str  # C's file name
    multiplier: float
    path: str
    size: int
    created: str


@dataclass
class FileEntry:
    path: str
    size: int
    partial: bool  # an interrupted download, resumed by the next build that needs it


@dataclass
class PartialEntry:
    path: str
    size: int
    # download: an interrupted download in files/ (resumed by the next build that needs it); pair: a pair folder
    # whose preparation did not finish; merge: the hidden file of a merge (or of a pair's record) being written
    kind: str
    pid: int | None  # the owner its name records (a merge's)
    alive: bool  # its owner still runs (a download: one is running now), so `cache clear` leaves it


@dataclass
class CacheReport:
    root: str
    prepared: list[PairEntry] = field(default_factory=list)
    files: list[FileEntry] = field(default_factory=list)
    unfinished: list[str] = field(default_factory=list)  # pair folders whose preparation did not finish
    partials: list[PartialEntry] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(p.size for p in self.prepared) + sum(f.size for f in self.files)

    def __json__(self) -> dict:
        return {"root": self.root, "prepared": self.prepared, "files": self.files, "unfinished": self.unfinished,
                "partials": self.partials, "total_bytes": self.total}  # fmt: skip


@dataclass
class Cleared:
    removed: list[str]
    freed: int
    busy: list[str]  # held by a running build: left alone
    dry_run: bool


def download_folder(file: Download) -> Path:
    """Where the cache keeps a registry version's file that is no Hub file (its source's cache path, made safe)."""
    return files_dir().joinpath(*(safe_filename(part, "_") for part in file.cache))


def report() -> CacheReport:
    r = CacheReport(str(hashing.cache_dirs()[0]))
    for p in prepared.pairs():
        r.prepared.append(PairEntry(p.key, p.family, p.a["file"], p.c["file"], p.multiplier, str(p.delta), p.size,
                                    p.created))  # fmt: skip
    r.unfinished = [str(d) for d in prepared.leftovers()]
    folder = files_dir()
    if folder.is_dir():
        for f in sorted(folder.rglob("*")):
            if f.is_file() and not f.name.endswith(".partial.json"):
                r.files.append(FileEntry(str(f), f.stat().st_size, f.name.endswith(".partial")))
    r.partials = partials()
    return r


def partials() -> list[PartialEntry]:
    """Every partial file the cache holds, with whether its owner still runs: an unfinished pair's (its lock
    held: being prepared), a merge's (the pid in its name, a zombie counted as gone), a download's (a download
    is running: its lock is not told apart from the others')."""
    found: list[PartialEntry] = []
    unfinished = prepared.leftovers()
    for folder in unfinished:
        found.append(PartialEntry(str(folder), _size(folder), "pair", None, _pair_busy(folder)))
    for root in (prepared.root(), files_dir()):
        for f in sorted(root.rglob(_MERGE_PARTIAL)) if root.is_dir() else []:
            pid = partial_owner(f)
            if pid is not None and f.is_file() and not any(d in f.parents for d in unfinished):
                found.append(PartialEntry(str(f), _file_size(f), "merge", pid, portable.pid_alive(pid)))
    downloads = sorted(files_dir().rglob(_DOWNLOAD_PARTIAL)) if files_dir().is_dir() else []
    running = _downloading() if downloads else False
    found += [PartialEntry(str(f), _file_size(f), "download", None, running) for f in downloads if f.is_file()]
    return found


def _size(folder: Path) -> int:
    return sum(_file_size(f) for f in folder.rglob("*") if f.is_file())


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:  # gone meanwhile
        return 0


def _live_merge_partial(folder: Path) -> bool:
    return any((pid := partial_owner(f)) is not None and portable.pid_alive(pid) for f in folder.rglob(_MERGE_PARTIAL))


def _pair_busy(folder: Path) -> bool:
    """A pair folder being prepared, or held by a build, or with a live merge writing in it."""
    with _all_or_nothing([prepared.lock_path(folder.name)]) as free:
        if not free:
            return True
        return bool(prepared.holders(folder.name, clean=False)[0]) or _live_merge_partial(folder)


def _download_locks() -> list[Path]:
    downloads = hashing.cache_dirs()[0] / "downloads"
    return sorted(downloads.glob("*.lock")) if downloads.is_dir() else []


def _downloading() -> bool:
    with _all_or_nothing(_download_locks()) as free:
        return not free


@contextlib.contextmanager
def _all_or_nothing(locks: list[Path]):
    """Hold every lock in ``locks`` without waiting; yields False (holding none) when one is taken."""
    with contextlib.ExitStack() as stack:
        for path in locks:
            try:
                stack.enter_context(FileLock(path, timeout=0))
            except Timeout:
                yield False
                return
        yield True


def clear(what: str = "all", *, dry_run: bool = False) -> Cleared:
    """Remove what ``what`` names: prepared pairs, fetched files, partial files whose owner is gone, or all."""
    if what not in WHAT:
        raise ValueError(f"what to clear must be one of {', '.join(WHAT)} (got {what!r})")
    done = Cleared([], 0, [], dry_run)
    if what in ("all", "prepared", "partial"):
        pairs = [Path(p.folder) for p in prepared.pairs()] if what != "partial" else []
        for folder in pairs + prepared.leftovers():
            _clear_pair(folder, done)
        root = prepared.root()
        for users in sorted(root.glob(f"*{prepared.USERS}")) if root.is_dir() else []:
            key = users.name[: -len(prepared.USERS)]
            if not (root / key).is_dir():  # a pair removed while a build that died held it
                with _all_or_nothing([prepared.lock_path(key)]) as free:
                    done.removed += [str(p) for p in prepared.holders(key, clean=not dry_run)[1]] if free else []
        _clear_merge_partials(root, done)  # left in a pair that is kept
    files_kept = False
    if what in ("all", "files") and files_dir().is_dir():
        with _all_or_nothing(_download_locks()) as free:
            if not free or _live_merge_partial(files_dir()):
                done.busy.append(str(files_dir()))
                files_kept = True
            else:
                done.removed.append(str(files_dir()))
                done.freed += _size(files_dir())
                if not dry_run:
                    shutil.rmtree(files_dir(), ignore_errors=True)
    if what == "partial" or (what == "all" and files_kept):
        _clear_merge_partials(files_dir(), done)
        _clear_downloads(done)
    if what == "all" and (measured := kept_dir()).is_dir():  # fine-tunes' distances from their bases: small
        done.removed.append(str(measured))
        done.freed += _size(measured)
        if not dry_run:
            shutil.rmtree(measured, ignore_errors=True)
    return done


def _clear_pair(folder: Path, done: Cleared) -> None:
    """A pair's folder, unless it is being prepared or a build holds it; stale users' lock files go either way."""
    with _all_or_nothing([prepared.lock_path(folder.name)]) as free:
        if not free:
            done.busy.append(str(folder))
            return
        live, stale = prepared.holders(folder.name, clean=not done.dry_run)
        done.removed += [str(p) for p in stale]
        if live or _live_merge_partial(folder):
            done.busy.append(str(folder))
            return
        done.removed.append(str(folder))
        done.freed += _size(folder)
        if not done.dry_run:
            shutil.rmtree(folder, ignore_errors=True)


def _clear_merge_partials(root: Path, done: Cleared) -> None:
    """Hidden files of merges whose process is gone (a zombie's too), in folders not removed already (a kept
    pair's folder included: a dead writer's file is no part of the pair)."""
    removed, busy = [Path(p) for p in done.removed], [Path(p) for p in done.busy]
    for f in sorted(root.rglob(_MERGE_PARTIAL)) if root.is_dir() else []:
        pid = partial_owner(f)
        if pid is None or not f.is_file() or any(d in f.parents for d in removed):
            continue
        if portable.pid_alive(pid):
            if not any(d in f.parents for d in busy):  # (a busy pair's is named by its folder)
                done.busy.append(str(f))
            continue
        _remove(f, done)


def _remove(f: Path, done: Cleared, *companions: Path) -> None:
    """Count ``f`` as cleared and, unless this is a dry run, remove it (and its ``companions``)."""
    done.removed.append(str(f))
    done.freed += _file_size(f)
    if not done.dry_run:
        for path in (f, *companions):
            path.unlink(missing_ok=True)


def _clear_downloads(done: Cleared) -> None:
    """Interrupted downloads (and their sidecars), while no download runs: a running one's is not told apart."""
    found = sorted(files_dir().rglob(_DOWNLOAD_PARTIAL)) if files_dir().is_dir() else []
    if not found:
        return
    with _all_or_nothing(_download_locks()) as free:
        for f in found:
            if not free:
                done.busy.append(str(f))
                continue
            _remove(f, done, f.with_name(f.name + ".json"))  # with its sidecar
