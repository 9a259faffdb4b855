"""The POSIX calls the merge uses for speed, each with the fallback taken where the OS lacks it (Windows has no
pread/pwrite, fallocate or fdatasync; macOS no fdatasync or posix_fallocate). Nothing here is looked up at import
time, so every module imports on every OS, and a test can take the calls away to prove the fallbacks."""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import threading
from pathlib import Path

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


def pid_alive(pid: int, proc: str = "/proc") -> bool:
    """Whether process ``pid`` (of this host) still runs: what a file named after its owner's pid asks before
    it is removed as a leftover. A zombie (exited, not yet reaped by its parent) is dead: it holds no files and
    writes nothing again. Linux reads the state in ``/proc/<pid>/stat``; Windows asks OpenProcess and
    GetExitCodeProcess (``os.kill(pid, 0)`` there would terminate the process); elsewhere (macOS, the BSDs)
    ``os.kill(pid, 0)``, to which a zombie still answers: it counts as alive there until it is reaped. A process
    this one may not look at counts as alive."""
    if pid <= 0:  # 0 and negative pids name process groups, never one process
        return False
    if os.path.isdir(os.path.join(proc, "self")):
        try:
            with open(os.path.join(proc, str(pid), "stat"), "rb") as f:
                stat = f.read()
        except FileNotFoundError:
            return False
        except OSError:
            return True
        fields = stat.rpartition(b")")[2].split()  # "pid (comm) S ...": comm may hold spaces and parentheses
        return not fields or fields[0] not in (b"Z", b"X", b"x")
    if os.name == "nt":
        return _windows_pid_alive(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: someone else's process, alive
        return True
    return True


def _windows_pid_alive(pid: int) -> bool:
    import ctypes

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
    handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return ctypes.get_last_error() == 5  # type: ignore[attr-defined]  # ERROR_ACCESS_DENIED: it exists
    try:
        code = ctypes.c_ulong()
        if not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)):
            return True
        return code.value == 259  # STILL_ACTIVE
    finally:
        kernel32.CloseHandle(handle)


def rename_no_replace(source: Path, target: Path) -> None:
    """``source`` renamed to ``target`` unless a file is there (FileExistsError): a hard link is made only where
    the name is free, atomically; where links are not allowed, the name is checked just before the rename.
    Once the link is made the file has its name: a source that cannot be unlinked then stays as a stale
    partial for the next run's clean-up, never an error for a file that is in place."""
    try:
        os.link(source, target)
    except FileExistsError:
        raise
    except OSError:
        if target.exists() or target.is_symlink():
            raise FileExistsError(errno.EEXIST, "File exists", str(target)) from None
        os.replace(source, target)
        return
    with contextlib.suppress(OSError):
        os.unlink(source)
