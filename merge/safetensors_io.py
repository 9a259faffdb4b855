"""Streaming safetensors: read a header without touching tensor data, read one tensor at a time, and write a
file header-first then tensor by tensor, so memory does not grow with model size.

Format: 8-byte little-endian header length N, N bytes of JSON ({name: {dtype, shape, data_offsets}},
optional "__metadata__" of str -> str), then the tensor bytes; offsets are relative to the end of the header.
"""

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}  # fmt: skip
NAMES = {v: k for k, v in DTYPES.items()}
FLOAT_NAMES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}
ITEMSIZE = {name: torch.empty((), dtype=dt).element_size() for name, dt in DTYPES.items()}
MAX_HEADER = 100 * 2**20


class CheckpointError(Exception):
    """A checkpoint that cannot be used as it is: truncated, not safetensors, unsafe pickle, ..."""


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


def read_header(path: str | os.PathLike) -> Header:
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: too short to be a safetensors file ({size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER or n + 8 > size:
            raise CheckpointError(f"{path}: not a safetensors file, or truncated (header length {n}, file {size} B)")
        raw = f.read(n)
    try:
        parsed = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{path}: safetensors header is not valid JSON ({exc})") from None
    data_start = 8 + n
    metadata = parsed.pop("__metadata__", None) or {}
    tensors: dict[str, TensorInfo] = {}
    for name, t in parsed.items():
        try:
            begin, end = t["data_offsets"]
            info = TensorInfo(t["dtype"], tuple(t["shape"]), data_start + begin, data_start + end)
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: malformed header entry for {name!r}") from None
        if info.dtype not in DTYPES:
            raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {info.dtype}")
        if info.end - info.start != info.nbytes:
            raise CheckpointError(f"{path}: tensor {name!r} size does not match its shape and dtype")
        if info.end > size:
            raise CheckpointError(
                f"{path}: truncated: tensor {name!r} ends at byte {info.end:,} but the file has {size:,} bytes "
                "(an interrupted download?)"
            )
        tensors[name] = info
    return Header(path, tensors, {str(k): str(v) for k, v in metadata.items()}, data_start, size)


def read_into(fd: int, info: TensorInfo, buffer: torch.Tensor) -> torch.Tensor:
    """Read one tensor's bytes into ``buffer`` (uint8, at least ``info.nbytes``) and view it typed."""
    view = buffer[: info.nbytes]
    mem = memoryview(view.numpy())
    done = 0
    while done < info.nbytes:
        got = os.preadv(fd, [mem[done:]], info.start + done)
        if got <= 0:
            raise CheckpointError(f"unexpected end of file reading bytes {info.start + done:,}")
        done += got
    return (
        view.view(DTYPES[info.dtype]).view(info.shape)
        if info.nbytes
        else torch.empty(info.shape, dtype=DTYPES[info.dtype])
    )


class SafetensorsWriter:
    """Write header first, then tensors in the declared order. The file appears under ``path`` only when
    ``commit()`` succeeds: until then it is ``<path>.partial`` and removed on failure."""

    def __init__(self, path: str | os.PathLike, layout: list[tuple[str, str, tuple[int, ...]]], metadata: dict):
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.partial-{os.getpid()}")
        self.order = [name for name, _, _ in layout]
        header, offset = {}, 0
        self.sizes = {}
        for name, dtype, shape in layout:
            nbytes = TensorInfo(dtype, tuple(shape)).nbytes
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            self.sizes[name] = nbytes
            offset += nbytes
        self.data_size = offset
        self._metadata = dict(metadata)
        self._header_json = header
        raw = self._encode(self._metadata)
        self.header_len = len(raw)
        self.total_size = 8 + self.header_len + self.data_size
        self._next = 0
        self._fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self._write_at(struct.pack("<Q", self.header_len) + raw, 0)
        self._pos = 8 + self.header_len

    def _encode(self, metadata: dict) -> bytes:
        body = {"__metadata__": metadata, **self._header_json} if metadata else dict(self._header_json)
        raw = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        return raw + b" " * (-len(raw) % 8)  # tensor data starts 8-byte aligned

    def _write_at(self, data, offset: int) -> None:
        mem = memoryview(data).cast("B")
        done = 0
        while done < len(mem):
            done += os.pwrite(self._fd, mem[done:], offset + done)

    def write(self, name: str, data: torch.Tensor) -> None:
        expected = self.order[self._next]
        if name != expected:
            raise RuntimeError(f"tensors must be written in header order: got {name}, expected {expected}")
        raw = data.contiguous().view(-1).view(torch.uint8) if data.numel() else torch.empty(0, dtype=torch.uint8)
        if raw.numel() != self.sizes[name]:
            raise RuntimeError(f"{name}: {raw.numel()} bytes written, header says {self.sizes[name]}")
        self._write_at(raw.numpy(), self._pos)
        self._pos += raw.numel()
        self._next += 1

    def update_metadata(self, metadata: dict) -> None:
        """Rewrite the header with new metadata of the same encoded length (fixed-width placeholders)."""
        raw = self._encode(metadata)
        if len(raw) > self.header_len:
            raise RuntimeError("updated metadata does not fit the reserved header")
        self._write_at(raw + b" " * (self.header_len - len(raw)), 8)
        self._metadata = metadata

    def commit(self) -> Path:
        if self._next != len(self.order):
            raise RuntimeError(f"only {self._next} of {len(self.order)} tensors written")
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = -1
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self.tmp.unlink(missing_ok=True)
