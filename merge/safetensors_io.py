"""Streaming safetensors: read a header without touching tensor data, read one tensor at a time, and write a
file header-first then tensor by tensor, so memory does not grow with model size.

Format: 8-byte little-endian header length N, N bytes of JSON ({name: {dtype, shape, data_offsets}},
optional "__metadata__" of str -> str), then the tensor bytes; offsets are relative to the end of the header.

torch is imported on first use, not with this module: a merge opens, checks and maps its files (and starts
preparing the output's pages) while torch's import, ~2 s, runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import mmap
import os
import queue
import struct
import threading
import warnings
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, cast

from merge import pages, portable
from merge.header import FLOAT_NAMES, ITEMSIZE, CheckpointError, Header, TensorInfo, read_header  # noqa: F401

if TYPE_CHECKING:
    import torch
    from typing_extensions import Buffer


@cache
def _dtypes() -> dict[str, torch.dtype]:
    import torch

    return {
        "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
        "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
        "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    }  # fmt: skip


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a safetensors dtype name ("F16" -> torch.float16)."""
    return _dtypes()[name]


def dtype_name(dtype: torch.dtype) -> str:
    """The safetensors name of a torch dtype (torch.float16 -> "F16")."""
    return next(k for k, v in _dtypes().items() if v == dtype)


def read_into(fd: int, info: TensorInfo, buffer: torch.Tensor) -> torch.Tensor:
    """Read one tensor's bytes into ``buffer`` (uint8, at least ``info.nbytes``) and view it typed."""
    import torch

    view = buffer[: info.nbytes]
    mem = memoryview(cast("Buffer", view.numpy()))  # numpy's stubs give ndarray __buffer__ from Python 3.12 only
    done = 0
    while done < info.nbytes:
        got = portable.pread_into(fd, mem[done:], info.start + done)
        if got <= 0:
            raise CheckpointError(f"unexpected end of file reading bytes {info.start + done:,}")
        done += got
    return (
        view.view(torch_dtype(info.dtype)).view(info.shape)
        if info.nbytes
        else torch.empty(info.shape, dtype=torch_dtype(info.dtype))
    )


def typed_view(buf, info: TensorInfo, offset: int) -> torch.Tensor:
    """A tensor over ``buf`` (an mmap) without copying; read-only buffers give tensors that must not be written."""
    import torch

    if info.nbytes == 0:
        return torch.empty(info.shape, dtype=torch_dtype(info.dtype))
    with warnings.catch_warnings():  # torch warns that a read-only buffer gives a non-writable tensor
        warnings.simplefilter("ignore", UserWarning)
        flat = torch.frombuffer(buf, dtype=torch.uint8, count=info.nbytes, offset=offset)
    return flat.view(torch_dtype(info.dtype)).view(info.shape)


class SafetensorsWriter:
    """Write a safetensors file whose header is known up front, tensor by tensor, with no tensor held in memory
    longer than it takes to write it.

    The file is preallocated (so a full disk fails here, with a clear error, not halfway) and memory-mapped:
    ``slot(name)`` is a writable view of the tensor's place in the file, so results are converted straight into
    the page cache. The file appears under ``path`` only when ``commit()`` succeeds: until then it is a hidden
    ``.<name>.partial-<pid>`` beside it, removed on failure. Dirty pages are flushed in the background as the
    file fills, so the final fsync is short.

    A fresh file's pages cost the kernel more than the merge's arithmetic (allocate, zero, then fault in each
    page on first write): ``start_populating()`` has a thread do that ahead of the writes.
    """

    FLUSH_EVERY = 512 * 2**20

    def __init__(self, path: str | os.PathLike, layout: list[tuple[str, str, tuple[int, ...]]], metadata: dict,
                 *, sync: bool = True, create: bool = True, hash_output: bool = False):  # fmt: skip
        """``create=False`` leaves the file to ``create()``, for a caller that must hold the writer (to abort it)
        before the first byte exists: an exception raised between a constructor's return and the assignment of
        its result (a signal handler's) would otherwise leave the partial file behind. ``hash_output``: the
        file's SHA256 is computed as tensors are marked done, in file order (``sha256``), so no one reads the
        file again to know it; the metadata must then be final (``update_metadata`` is refused)."""
        self.path = Path(path)
        self.sync = sync  # fsync before the rename: durable across a power loss, bounded by the disk's speed
        self.tmp = self.path.with_name(f".{self.path.name}.partial-{os.getpid()}")
        header, offset = {}, 0
        self.infos: dict[str, TensorInfo] = {}
        for name, dtype, shape in layout:
            info = TensorInfo(dtype, tuple(shape), offset, offset + TensorInfo(dtype, tuple(shape)).nbytes)
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [info.start, info.end]}
            self.infos[name] = info
            offset = info.end
        self.data_size = offset
        self._header_json = header
        self._raw_header = raw = self._encode(dict(metadata))
        self.header_len = len(raw)
        self.data_start = 8 + self.header_len  # update_metadata keeps the header's length
        self.total_size = self.data_start + self.data_size
        self._fd = -1
        self._mm: mmap.mmap | None = None  # none for an output without tensor data
        self._done = 0
        self._flushed = 0
        self._flusher: threading.Thread | None = None
        self._populator: threading.Thread | None = None
        self._stop_populating = threading.Event()
        self._sha = hashlib.sha256() if hash_output else None
        self._hashed = 0  # data bytes handed to the hash so far: tensors are hashed in file order only
        # done tensors' spans, hashed on a thread of their own: the merge goes on while the hash catches up
        self._to_hash: queue.SimpleQueue[tuple[int, int] | None] = queue.SimpleQueue()
        self._hasher: threading.Thread | None = None
        if create:
            self.create()

    def create(self) -> None:
        """Make the hidden partial file at its full size (a full disk fails here, before any work), header first."""
        try:
            self._fd = os.open(self.tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            portable.preallocate(self._fd, self.total_size)
            head = struct.pack("<Q", self.header_len) + self._raw_header
            self._write_at(head, 0)
            if self._sha is not None:
                self._sha.update(head)
            if self.data_size:
                self._mm = mmap.mmap(self._fd, self.total_size)
        except BaseException:
            self.abort()
            raise

    def _encode(self, metadata: dict) -> bytes:
        body = {"__metadata__": metadata, **self._header_json} if metadata else dict(self._header_json)
        raw = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        return raw + b" " * (-len(raw) % 8)  # tensor data starts 8-byte aligned

    def _write_at(self, data, offset: int) -> None:
        mem = memoryview(data).cast("B")
        done = 0
        while done < len(mem):
            done += portable.pwrite(self._fd, mem[done:], offset + done)

    def start_populating(self) -> bool:
        """Map the output's pages in on a thread, ahead of the writes (see merge.pages). Stops at the end of
        the file or at commit/abort. Returns False where the kernel cannot (not Linux, or older than 5.14)."""
        if not pages.available() or self._mm is None or self._populator is not None:
            return False
        self._populator = threading.Thread(target=self._populate, daemon=True, name="output-populate")
        self._populator.start()
        return True

    def _populate(self) -> None:
        mm = self._mm
        assert mm is not None  # start_populating checked; commit and abort join this thread before closing it
        with pages.address_of(mm) as base:
            pos = self.data_start
            while pos < self.total_size and not self._stop_populating.is_set():
                pos = max(pos, self.data_start + self._done)  # pages already written need nothing
                end = min(pos + pages.STEP, self.total_size)
                if not pages.populate(base, pos, end):
                    return  # the writes will fault the pages in themselves
                pos = end

    def _join_populator(self) -> None:
        self._stop_populating.set()
        if self._populator is not None:
            self._populator.join()

    @property
    def sizes(self) -> dict[str, int]:
        return {k: v.nbytes for k, v in self.infos.items()}

    def span(self, name: str) -> tuple[mmap.mmap | None, int, int]:
        """``(mapping, start, end)`` of tensor ``name``'s place in the mapped output (merge.direct writes there);
        no mapping where the output has no tensor data."""
        info = self.infos[name]
        return self._mm, self.data_start + info.start, self.data_start + info.end

    def slot(self, name: str) -> torch.Tensor:
        """The writable place of tensor ``name`` in the output file."""
        return typed_view(self._mm, self.infos[name], self.data_start + self.infos[name].start)

    def write(self, name: str, data: torch.Tensor) -> None:
        slot = self.slot(name)
        if tuple(data.shape) != tuple(slot.shape):
            raise RuntimeError(f"{name}: shape {tuple(data.shape)} does not match the header's {tuple(slot.shape)}")
        slot.copy_(data)
        self.done(name)

    def done(self, name: str) -> None:
        """Mark ``name`` written; start writeback of what has accumulated so the final fsync has little left.
        Called from one thread (the one that commits)."""
        info = self.infos[name]
        self._done += info.nbytes
        if self._sha is not None:
            self._hash(info)
        if (
            self.sync
            and self._done - self._flushed >= self.FLUSH_EVERY
            and (self._flusher is None or not self._flusher.is_alive())
        ):
            self._flushed = self._done
            self._flusher = threading.Thread(target=portable.datasync, args=(self._fd,), daemon=True)
            self._flusher.start()

    def _hash(self, info: TensorInfo) -> None:
        """Hand a done tensor's bytes, in the mapping while they are in memory, to the file's SHA256. Out of
        file order the stream cannot go on: the file is then left unhashed (``sha256`` is None)."""
        if info.start != self._hashed:
            self._stop_hashing()
            self._sha = None
            return
        if info.nbytes:
            if self._hasher is None:
                self._hasher = threading.Thread(target=self._hash_spans, daemon=True, name="output-hash")
                self._hasher.start()
            self._to_hash.put((self.data_start + info.start, info.nbytes))
        self._hashed = info.end

    def _hash_spans(self) -> None:
        assert self._sha is not None and self._mm is not None  # the mapping outlives this thread (commit joins it)
        with memoryview(self._mm) as whole:
            while (span := self._to_hash.get()) is not None:
                start, size = span
                with whole[start : start + size] as part:
                    self._sha.update(part)  # hashlib lets go of the GIL

    def _stop_hashing(self) -> None:
        if self._hasher is not None:
            self._to_hash.put(None)
            self._hasher.join()
            self._hasher = None

    @property
    def sha256(self) -> str | None:
        """The SHA256 of the whole file (upper-case hex, as merge.hashing gives it), where it was hashed as
        written and every tensor is done (known once committed)."""
        if self._sha is None or self._hashed != self.data_size or self._hasher is not None:
            return None
        return self._sha.hexdigest().upper()

    def update_metadata(self, metadata: dict) -> None:
        """Rewrite the header with new metadata of the same encoded length (fixed-width placeholders)."""
        if self._sha is not None:
            raise RuntimeError("the header of a file hashed as it is written cannot change")
        raw = self._encode(metadata)
        if len(raw) > self.header_len:
            raise RuntimeError("updated metadata does not fit the reserved header")
        self._write_at(raw + b" " * (self.header_len - len(raw)), 8)

    def commit(self, *, replace: bool = True) -> Path:
        """The file under its final name, whole. ``replace=False``: never over a file that got there meanwhile
        (FileExistsError, and the partial stays for ``abort``)."""
        self._join_populator()
        self._stop_hashing()
        if self._flusher is not None:
            self._flusher.join()
        if self._mm is not None:
            if self.sync:
                self._mm.flush()
            self._mm.close()
            self._mm = None
        if self.sync:
            os.fsync(self._fd)
        os.close(self._fd)
        self._fd = -1
        if replace:
            os.replace(self.tmp, self.path)
        else:
            portable.rename_no_replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        self._join_populator()
        self._stop_hashing()
        if self._flusher is not None:
            self._flusher.join()
        if self._mm is not None:
            with contextlib.suppress(BufferError):  # a view is still alive: the mapping goes with the process
                self._mm.close()
            self._mm = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self.tmp.unlink(missing_ok=True)
