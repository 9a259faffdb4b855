"""Read a safetensors header without torch and without touching tensor data: names, dtypes, shapes, offsets.

Kept free of torch so that `lookup` and `probe` classify a 7 GB file in milliseconds.
"""

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
            "F8_E4M3": 1, "F8_E5M2": 1}  # fmt: skip
FLOAT_NAMES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}
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
        if info.dtype not in ITEMSIZE:
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
