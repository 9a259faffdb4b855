"""SHA256, AutoV1, AutoV2 and AutoV3 of a model file in one streaming read, cached by path, size, mtime, ctime
and inode.

AutoV2 is the first 10 hex digits of SHA256 (A1111's "model hash"); AutoV1 hashes the 64 KiB at 1 MiB;
AutoV3 hashes a safetensors file's tensor data (header excluded), first 12 hex digits — as Civitai computes
them (AutoV3 per domain.md is the least certain of the four).
"""

import hashlib
import json
import os
import stat
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeGuard

from platformdirs import user_cache_dir

from data import settings
from merge import portable
from merge.header import CheckpointError, header_length, regular_file

CHUNK = 8 * 2**20
_lock = threading.Lock()


@dataclass
class FileHashes:
    sha256: str
    autov2: str
    autov1: str | None
    autov3: str | None
    # False when the file was hashed without AutoV3's second pass (scan and build need only SHA256): the
    # AutoV3 of such an entry is unknown, not absent.
    data_pass: bool = True


def cache_dirs() -> list[Path]:
    """Where hashes are cached: ``$INPAINT_ADVISOR_CACHE``, then the user cache dir (used when the first cannot
    be written, so that a hash that took minutes is not lost)."""
    default = Path(user_cache_dir("inpaint-advisor", appauthor=False))
    configured = settings.current().cache
    return [Path(configured), default] if configured and Path(configured) != default else [default]


def file_stamp(path: Path) -> tuple[str, str]:
    """(absolute path, "size:mtime_ns:ctime_ns:inode"): what a cached fact about a file is keyed by. ctime and
    inode too: a file rewritten in place or swapped for another of the same size, its mtime set back, is not
    the file that was hashed (no user-level call sets ctime back)."""
    st = path.stat()
    return str(path.resolve()), f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}"


def stat_stamp(st: os.stat_result) -> list[int]:
    """What changes when a file's bytes may have, whoever changed them: ctime too, which no user-level call can
    set back, and the inode and device (another file put in its place)."""
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


_loaded: dict[Path, tuple[tuple[int, int], dict]] = {}  # cache file -> (its size and mtime, its entries)


def _load(target: Path) -> dict:
    """The cache's entries; a missing, unreadable or corrupt cache is empty (and rewritten on the next store).
    Parsed once while the file is unchanged: a scan of 500 files asks it 500 times."""
    try:
        st = target.stat()
        stamp = (st.st_size, st.st_mtime_ns)
        hit = _loaded.get(target)
        if hit is not None and hit[0] == stamp:
            return dict(hit[1])
        data = json.loads(target.read_text())
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return {}
    data = data if isinstance(data, dict) else {}
    _loaded[target] = (stamp, data)
    return dict(data)


def _valid(entry: object) -> TypeGuard[dict[str, Any]]:
    return isinstance(entry, dict) and isinstance(entry.get("sha256"), str) and isinstance(entry.get("autov2"), str) \
        and all(entry.get(k) is None or isinstance(entry.get(k), str) for k in ("autov1", "autov3")) \
        and isinstance(entry.get("data_pass", True), bool)  # fmt: skip


def cached(path: str | os.PathLike, *, autov3: bool = True) -> FileHashes | None:
    """The cached hashes of ``path`` while it is unchanged; with ``autov3``, only an entry that has AutoV3."""
    name, stamp = file_stamp(Path(path))
    for folder in cache_dirs():
        entry = _load(folder / "hashes.json").get(name)
        if _valid(entry) and entry.get("stamp") == stamp and (entry.get("data_pass", True) or not autov3):
            return FileHashes(entry["sha256"], entry["autov2"], entry.get("autov1"), entry.get("autov3"),
                              data_pass=entry.get("data_pass", True))
    return None


def _store(path: Path, hashes: FileHashes) -> str | None:
    """Cache ``hashes``; returns a warning when no cache folder could be written (the hashes are still good)."""
    name, stamp = file_stamp(path)
    problems: list[str] = []
    with _lock:
        for folder in cache_dirs():
            target = folder / "hashes.json"
            try:
                data = _load(target)
                data[name] = {"stamp": stamp, **asdict(hashes)}
                folder.mkdir(parents=True, exist_ok=True)
                tmp = target.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_text(json.dumps(data))
                os.replace(tmp, target)
                return None if not problems else f"hash cache {problems[0]}; cached in {folder} instead"
            except OSError as exc:
                problems.append(f"{folder} not writable ({exc.strerror})")
    return f"the hashes could not be cached: {'; '.join(problems)}"


def _safetensors_data_start(head: bytes) -> int | None:
    n = header_length(head)
    return 8 + n if n is not None and head[8:9] == b"{" else None


class StreamHasher:
    """All four hashes of a file fed to ``update`` in order, in one pass: a download hashes as it streams."""

    _AUTOV1 = (0x100000, 0x110000)  # the 64 KiB AutoV1 hashes

    def __init__(self, *, autov3: bool = True):
        self.autov3 = autov3
        self._full = hashlib.sha256()
        self._data = hashlib.sha256()  # a safetensors file's tensor data (AutoV3)
        self._v1 = hashlib.sha256()
        self._head = b""
        self._start: int | None = None
        self._pos = 0

    def update(self, chunk: bytes | memoryview) -> None:
        chunk = memoryview(chunk)
        pos = self.advance(chunk)
        self.update_full(chunk, pos)
        self.update_data(chunk, pos)

    # The two halves of ``update``, for BackgroundHasher's two threads: ``advance`` (in order, first) learns
    # where a safetensors file's data starts and returns the chunk's position; the halves may then run apart.
    def advance(self, chunk: memoryview) -> int:
        if len(self._head) < 9:
            self._head += bytes(chunk[: 9 - len(self._head)])
            if len(self._head) >= 9:
                self._start = _safetensors_data_start(self._head)
        pos = self._pos
        self._pos += len(chunk)
        return pos

    def update_full(self, chunk: memoryview, pos: int) -> None:
        """SHA256 (and AutoV2) and AutoV1's window."""
        self._full.update(chunk)
        lo, hi = self._AUTOV1
        if pos + len(chunk) > lo and pos < hi:
            self._v1.update(chunk[max(0, lo - pos) : hi - pos])

    def update_data(self, chunk: memoryview, pos: int) -> None:
        """AutoV3: the tensor data after a safetensors header."""
        if self.autov3 and self._start is not None and pos + len(chunk) > self._start:
            self._data.update(chunk[max(0, self._start - pos) :])

    def result(self) -> FileHashes:
        sha = self._full.hexdigest().upper()
        autov1 = self._v1.hexdigest()[:8].upper() if self._pos >= self._AUTOV1[1] else None
        autov3 = self._data.hexdigest()[:12].upper() if self.autov3 and self._start is not None else None
        return FileHashes(sha, sha[:10], autov1, autov3, self.autov3)


class BackgroundHasher:
    """A StreamHasher fed from other threads, so that hashing overlaps whatever produces the chunks (a
    download's network reads, a file's disk reads): one thread for SHA256/AutoV1, one for AutoV3's pass over
    the tensor data (when the inner hasher wants AutoV3), so that two cores together hash at about the speed of
    one pass. Chunks must not change after ``update`` (bytes do not). ``close`` ends the threads when the stream
    fails."""

    _END = object()

    def __init__(self, inner: StreamHasher | None = None, depth: int = 16):
        import queue

        self._inner = inner or StreamHasher()
        passes = [self._inner.update_full] + ([self._inner.update_data] if self._inner.autov3 else [])
        self._queues: list[queue.Queue] = [queue.Queue(maxsize=depth) for _ in passes]  # bounded
        self._threads = [threading.Thread(target=self._run, args=(q, work), daemon=True, name="stream-hash")
                         for q, work in zip(self._queues, passes, strict=True)]  # fmt: skip
        for t in self._threads:
            t.start()

    def _run(self, q, work) -> None:
        while (item := q.get()) is not self._END:
            work(*item)

    def update(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        pos = self._inner.advance(view)
        for q in self._queues:
            q.put((view, pos))

    def result(self) -> FileHashes:
        self.close()
        return self._inner.result()

    def close(self) -> None:
        for q, t in zip(self._queues, self._threads, strict=True):
            if t.is_alive():
                q.put(self._END)
        for t in self._threads:
            t.join()


def folder_identity(folder: str | os.PathLike) -> str:
    """A diffusers folder's identity: the SHA256 of its weight files' names and SHA256s (each cached). A weight
    file that is not a regular file (a FIFO, a device) is a CheckpointError, never opened."""
    folder = Path(folder)
    if not stat.S_ISDIR(regular_file(folder, folder=True).st_mode):
        raise CheckpointError(f"{folder}: not a folder")  # (a regular file: its own hash is its identity)
    files = sorted(f for f in folder.rglob("*.safetensors") if f.exists() and not f.is_dir())
    lines = [f"{f.relative_to(folder)}:{file_hashes(f, autov3=False).sha256}" for f in files]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest().upper()


def remember(path: str | os.PathLike, hashes: FileHashes) -> str | None:
    """Put hashes computed elsewhere (while downloading) in the cache; returns a warning if none could be written."""
    return _store(Path(path), hashes)


def file_hashes(path: str | os.PathLike, *, autov3: bool = True, use_cache: bool = True, progress=None,
                warn=None) -> FileHashes:  # fmt: skip
    """``use_cache=False`` hashes the bytes whatever the cache says (and corrects the cache where it was
    wrong). ``autov3=False`` skips AutoV3's second pass over the data (what needs only SHA256: one pass hashes at
    the disk's speed where two would be bound by the cores); ``progress(nbytes)`` is called after each chunk
    (for a progress bar); ``warn(message)`` hears of a cache that could not be written. Only a regular file is
    read (CheckpointError for a FIFO or a device), and one that changes while it is read is a CheckpointError:
    its hashes would be of no file that ever was."""
    path = Path(path)
    before = regular_file(path)
    if use_cache and (hit := cached(path, autov3=autov3)) is not None:
        return hit
    hashes = _read_and_hash(path, StreamHasher(autov3=autov3), progress) if not autov3 else _hash_two_passes(
        path, progress)  # fmt: skip
    after = os.stat(path)
    if (after.st_ino, after.st_size, after.st_mtime_ns, after.st_ctime_ns) != (
            before.st_ino, before.st_size, before.st_mtime_ns, before.st_ctime_ns):  # fmt: skip
        raise CheckpointError(f"{path}: changed while it was hashed ({before.st_size:,} bytes before, "
                              f"{after.st_size:,} after): hash it again once it is no longer being written")
    # a fresh hash goes into the cache unless an entry with the same SHA256 (perhaps with AutoV3 too) is there
    known = None if use_cache else cached(path, autov3=False)
    if (known is None or known.sha256 != hashes.sha256) and (problem := _store(path, hashes)) and warn:
        warn(problem)
    return hashes


def _read_and_hash(path: Path, hasher: StreamHasher, progress) -> FileHashes:
    """One pass: a thread reads into a few reused buffers while this one hashes the last filled. Reused buffers,
    not a fresh 8 MiB bytes per read: the page faults of new memory cost a core a third of the hashing time."""
    import queue

    free: queue.Queue = queue.Queue()
    filled: queue.Queue = queue.Queue()
    for _ in range(4):
        free.put(bytearray(CHUNK))
    stop = threading.Event()

    def read() -> None:
        try:
            with open(path, "rb", buffering=0) as f:
                portable.advise_sequential(f.fileno())
                while not stop.is_set():
                    buf = free.get()
                    n = f.readinto(buf)
                    filled.put((buf, n))
                    if not n:
                        return
        except BaseException as exc:  # noqa: BLE001 - handed to the hashing thread, raised there
            filled.put(exc)

    reader = threading.Thread(target=read, daemon=True, name="hash-read")
    reader.start()
    try:
        while True:
            item = filled.get()
            if isinstance(item, BaseException):
                raise item
            buf, n = item
            if not n:
                return hasher.result()
            hasher.update(memoryview(buf)[:n])
            free.put(buf)
            if progress:
                progress(n)
    finally:
        stop.set()
        free.put(bytearray(0))  # unblock a reader waiting for a buffer
        reader.join()


def _hash_two_passes(path: Path, progress) -> FileHashes:
    hasher = BackgroundHasher()  # the disk reads the next chunks while two cores hash these
    try:
        with open(path, "rb", buffering=0) as f:
            while chunk := f.read(CHUNK):
                hasher.update(chunk)
                if progress:
                    progress(len(chunk))
        return hasher.result()
    finally:
        hasher.close()
