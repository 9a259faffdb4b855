"""Read a safetensors header without torch and without touching tensor data: names, dtypes, shapes, offsets.

Kept free of torch so that `lookup` and `probe` classify a 7 GB file in milliseconds.
"""

import json
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from data.errors import InpaintAdvisorError

ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
            "F8_E4M3": 1, "F8_E5M2": 1}  # fmt: skip
FLOAT_NAMES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}
MAX_HEADER = 100 * 2**20


class CheckpointError(InpaintAdvisorError):
    """A checkpoint that cannot be used as it is: truncated, not safetensors, unsafe pickle, ..."""

    code = "bad-checkpoint"


_SPECIAL = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
            (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"))  # fmt: skip


def header_length(head: bytes) -> int | None:
    """The safetensors header's length from a file's first 8 bytes (little-endian), or None where they cannot
    start one: fewer than 8 bytes, or a length below 2 (``{}``) or past MAX_HEADER. The one reading of the
    format's prefix, for files, downloads and remote headers alike."""
    if len(head) < 8:
        return None
    (n,) = struct.unpack("<Q", head[:8])
    return n if 2 <= n <= MAX_HEADER else None


def regular_file(path: str | os.PathLike, *, folder: bool = False) -> os.stat_result:
    """``path``'s stat (symlinks followed) when it is a regular file (or, with ``folder``, a directory): what
    every reader calls before it opens a checkpoint, since opening a FIFO blocks until a writer comes (forever)
    and a device never ends. Anything else is one CheckpointError naming what it is."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file" + (" or folder" if folder else "")) from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if stat.S_ISREG(st.st_mode) or (folder and stat.S_ISDIR(st.st_mode)):
        return st
    what = next((name for test, name in _SPECIAL if test(st.st_mode)), "a special file")
    link = "a symlink to " if os.path.islink(path) else ""
    raise CheckpointError(f"{path}: {link}{what}, not a regular file")


@dataclass(frozen=True)
class TensorInfo:
    dtype: str  # safetensors dtype name ("F16", "I64", ...)
    shape: tuple[int, ...]
    start: int = 0  # absolute byte offsets in the file (0 for tensors that do not live in a safetensors file)
    end: int = 0

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * ITEMSIZE[self.dtype]

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_NAMES


@dataclass
class Header:
    path: Path
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    data_start: int
    file_size: int


def _int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _entry(path, name: str, t, data_start: int) -> TensorInfo:
    """One header entry, checked: a dtype we know, a shape of non-negative ints, two offsets that agree."""
    where = f"{path}: tensor {name[:200]!r}"
    if not isinstance(t, dict):
        raise CheckpointError(f"{where}: malformed header entry (not an object)")
    dtype, shape, offsets = t.get("dtype"), t.get("shape"), t.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in ITEMSIZE:
        raise CheckpointError(f"{where}: unsupported dtype {str(dtype)[:40]}")
    if not isinstance(shape, list) or len(shape) > 16 or not all(_int(d) and d >= 0 for d in shape):
        raise CheckpointError(f"{where}: malformed shape {str(shape)[:80]}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_int(o) and o >= 0 for o in offsets)):
        raise CheckpointError(f"{where}: malformed data_offsets {str(offsets)[:80]}")
    begin, end = offsets
    info = TensorInfo(dtype, tuple(shape), data_start + begin, data_start + end)
    if end < begin or end - begin != info.nbytes:
        raise CheckpointError(f"{where}: {end - begin} bytes at its offsets, but its shape and dtype make "
                              f"{info.nbytes}")  # fmt: skip
    return info


def parse_header_json(raw: bytes, where, data_start: int) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """The JSON of a safetensors header (the ``n`` bytes after its length): tensors and ``__metadata__``, each
    entry checked; ``where`` names the file in errors. Also for headers read remotely with a range request."""
    if raw[:1] != b"{":
        raise CheckpointError(f"{where}: not a safetensors file (its header is not a JSON object)")
    try:
        parsed = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise CheckpointError(f"{where}: safetensors header is not UTF-8") from None
    except RecursionError:
        raise CheckpointError(f"{where}: safetensors header is nested too deeply") from None
    except ValueError as exc:
        raise CheckpointError(f"{where}: safetensors header is not valid JSON ({str(exc)[:120]})") from None
    if not isinstance(parsed, dict):
        raise CheckpointError(f"{where}: not a safetensors file (its header is not a JSON object)")
    metadata = parsed.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{where}: malformed __metadata__ (it must map names to strings)")
    return {name: _entry(where, name, t, data_start) for name, t in parsed.items()}, dict(metadata)


def read_header(path: str | os.PathLike) -> Header:
    """The header of a safetensors file, checked as the format requires: a JSON object, UTF-8, whose tensors
    cover the data exactly once and in order (no overlap, no gap, nothing after the last one). Anything else is
    one CheckpointError saying what."""
    path = Path(path)
    if os.path.isdir(path):
        raise CheckpointError(f"{path}: a folder, not a safetensors file")
    size = regular_file(path).st_size
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path}: too short to be a safetensors file ({size} bytes)")
            n = header_length(head)
            if n is None or n + 8 > size:
                n = struct.unpack("<Q", head)[0]
                raise CheckpointError(
                    f"{path}: not a safetensors file, or truncated (header length {n}, file {size} B)")  # fmt: skip
            raw = f.read(n)
    except IsADirectoryError:
        raise CheckpointError(f"{path}: a folder, not a safetensors file") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read ({exc.strerror})") from None
    data_start = 8 + n
    tensors, metadata = parse_header_json(raw, path, data_start)
    pos = data_start
    for name, info in sorted(tensors.items(), key=lambda kv: (kv[1].start, kv[1].end)):
        if info.start != pos:
            problem = "overlaps the tensor before it" if info.start < pos else f"leaves a gap of {info.start - pos} B"
            raise CheckpointError(f"{path}: tensor {name[:200]!r} {problem} (the data must be covered once, in order)")
        pos = info.end
    if pos > size:
        raise CheckpointError(f"{path}: truncated: its tensors end at byte {pos:,} but the file has {size:,} bytes "
                              "(an interrupted download?)")  # fmt: skip
    if pos < size:
        raise CheckpointError(f"{path}: {size - pos:,} bytes after the last tensor (not a safetensors file as "
                              "written, or damaged)")  # fmt: skip
    return Header(path, tensors, metadata, data_start, size)
