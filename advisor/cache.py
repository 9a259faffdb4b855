"""What the cache holds for builds, and clearing it: prepared pairs (merge.prepared) and fetched files (A, C and
fine-tunes, ``files_dir``). Hashes and download records stay: they are small and keyed by what they
describe, so a deleted file only makes them unused.

Clearing never pulls a file from under a running build: it takes every download lock and every pair's lock
without waiting, and leaves (and reports) what another process holds.
"""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock, Timeout

from merge import hashing, prepared

WHAT = ("all", "prepared", "files")


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
class CacheReport:
    root: str
    prepared: list[PairEntry] = field(default_factory=list)
    files: list[FileEntry] = field(default_factory=list)
    unfinished: list[str] = field(default_factory=list)  # pair folders whose preparation did not finish

    @property
    def total(self) -> int:
        return sum(p.size for p in self.prepared) + sum(f.size for f in self.files)

    def __json__(self) -> dict:
        return {"root": self.root, "prepared": self.prepared, "files": self.files, "unfinished": self.unfinished,
                "total_bytes": self.total}  # fmt: skip


@dataclass
class Cleared:
    removed: list[str]
    freed: int
    busy: list[str]  # held by a running build: left alone
    dry_run: bool


def files_dir() -> Path:
    return hashing.cache_dirs()[0] / "files"


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
    return r


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
    if what not in WHAT:
        raise ValueError(f"what to clear must be one of {', '.join(WHAT)} (got {what!r})")
    done = Cleared([], 0, [], dry_run)
    if what in ("all", "prepared"):
        for folder in [Path(p.folder) for p in prepared.pairs()] + prepared.leftovers():
            _clear_pair(folder, done)
    if what in ("all", "files") and files_dir().is_dir():
        downloads = hashing.cache_dirs()[0] / "downloads"
        locks = sorted(downloads.glob("*.lock")) if downloads.is_dir() else []
        with _all_or_nothing(locks) as free:
            if not free:
                done.busy.append(str(files_dir()))
                return done
            size = sum(f.stat().st_size for f in files_dir().rglob("*") if f.is_file())
            done.removed.append(str(files_dir()))
            done.freed += size
            if not dry_run:
                shutil.rmtree(files_dir(), ignore_errors=True)
    return done


def _clear_pair(folder: Path, done: Cleared) -> None:
    with _all_or_nothing([folder.with_name(folder.name + ".lock")]) as free:
        if not free:
            done.busy.append(str(folder))
            return
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        done.removed.append(str(folder))
        done.freed += size
        if not done.dry_run:
            shutil.rmtree(folder, ignore_errors=True)
