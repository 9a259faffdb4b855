"""Have the kernel map a file's pages into memory ahead of use, from a thread that does not hold the GIL.

The merge's inputs and output are memory maps. Touching a page for the first time costs a fault and, for a
cold input, a disk read; for the fresh output, allocating and zeroing a page. ``populate`` does that work
ahead, on another core, while the main thread imports torch or computes: MADV_POPULATE_READ (Linux 5.14+)
reads the pages in (or maps fresh zero pages of the output, clean, so nothing extra is written back) and
maps them. It is called through ctypes, which releases the GIL for the call; ``mmap.madvise`` holds it.
(posix_fadvise WILLNEED is no substitute: Linux reads only the first read_ahead_kb of the range asked.)
"""

import contextlib
import ctypes
import mmap
import sys
from collections.abc import Iterator
from functools import cache

MADV_POPULATE_READ = 22
PyBUF_SIMPLE = 0
STEP = 32 << 20  # bytes per populate call: large enough to be cheap, small enough to stop soon when asked


class _PyBuffer(ctypes.Structure):
    _fields_ = [
        ("buf", ctypes.c_void_p), ("obj", ctypes.c_void_p), ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t), ("readonly", ctypes.c_int), ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p), ("shape", ctypes.c_void_p), ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p), ("internal", ctypes.c_void_p),
    ]  # fmt: skip


@cache
def _madvise():
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int], ctypes.c_int
    return fn


@contextlib.contextmanager
def address_of(buffer: mmap.mmap) -> Iterator[int]:
    """The address of a (read-only or writable) mmap's memory. The mmap cannot be closed until the block exits
    (Python counts it as exported), so no call can outlive the mapping."""
    view = _PyBuffer()
    if ctypes.pythonapi.PyObject_GetBuffer(ctypes.py_object(buffer), ctypes.byref(view), PyBUF_SIMPLE) != 0:
        raise BufferError("cannot get the buffer's address")
    try:
        yield view.buf
    finally:
        ctypes.pythonapi.PyBuffer_Release(ctypes.byref(view))


class Addresses:
    """Addresses of several mappings, each held by ``address_of`` (so that it cannot be closed under a caller
    that uses the address) until ``close()``."""

    def __init__(self):
        self._held = contextlib.ExitStack()
        self._base: dict[int, int] = {}

    def of(self, mapping: mmap.mmap) -> int:
        key = id(mapping)
        if key not in self._base:
            self._base[key] = self._held.enter_context(address_of(mapping))
        return self._base[key]

    def close(self) -> None:
        self._base.clear()
        self._held.close()


def available() -> bool:
    return _madvise() is not None


def populate(address: int, start: int, end: int) -> bool:
    """Map bytes [start, end) of the mapping at ``address`` in, reading them from disk if need be. Blocks
    until done, without the GIL. False where the kernel cannot (older than 5.14), or the range is gone."""
    madvise = _madvise()
    if madvise is None or end <= start:
        return madvise is not None
    first = start - start % mmap.PAGESIZE
    return madvise(address + first, end - first, MADV_POPULATE_READ) == 0
