"""The POSIX calls the merge uses for speed, each with the fallback taken where the OS lacks it (Windows has no
pread/pwrite, fallocate or fdatasync; macOS no fdatasync or posix_fallocate). Nothing here is looked up at import
time, so every module imports on every OS, and a test can take the calls away to prove the fallbacks."""

from __future__ import annotations

import mmap
import os
import threading

# seek-then-read on a shared descriptor is not atomic: threads of the fallback take turns
_seek_lock = threading.Lock()


def pread_into(fd: int, mem: memoryview, offset: int) -> int:
    """Read into ``mem`` from ``offset`` of ``fd``; the number of bytes read (0 at the end of the file)."""
    if hasattr(os, "preadv"):
        return os.preadv(fd, [mem], offset)
    with _seek_lock:
        os.lseek(fd, offset, os.SEEK_SET)
        data = os.read(fd, len(mem))
    mem[: len(data)] = data
    return len(data)


def pwrite(fd: int, data: memoryview, offset: int) -> int:
    """Write ``data`` at ``offset`` of ``fd``; the number of bytes written."""
    if hasattr(os, "pwrite"):
        return os.pwrite(fd, data, offset)
    with _seek_lock:
        os.lseek(fd, offset, os.SEEK_SET)
        return os.write(fd, data)


def preallocate(fd: int, size: int) -> None:
    """Give ``fd`` its full size now, so that a full disk fails here and not half way through. ENOSPC is raised;
    a filesystem or OS without fallocate gets a sparse file of that size instead."""
    if hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(fd, 0, size)
            return
        except OSError as exc:
            if exc.errno == 28:  # ENOSPC
                raise
    os.ftruncate(fd, size)


def datasync(fd: int) -> None:
    """Flush ``fd``'s data to disk (fdatasync where there is one: metadata other than the size can wait)."""
    (getattr(os, "fdatasync", None) or os.fsync)(fd)


def zero_mapping(size: int) -> mmap.mmap:
    """``size`` bytes of zeros that cost no memory: on POSIX a private read-only anonymous mapping (every page the
    kernel's zero page); elsewhere an anonymous mapping, committed only as pages are touched."""
    if hasattr(mmap, "MAP_PRIVATE") and hasattr(mmap, "PROT_READ"):
        return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)
    return mmap.mmap(-1, size, access=mmap.ACCESS_READ)


def advise_sequential(fd: int) -> None:
    """Ask for a larger kernel readahead on a file read start to end (a no-op where there is no fadvise)."""
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
