"""A ``torch.save`` zip checkpoint read like a safetensors file: a weights-only parse of its pickle gives every
tensor's storage, offset, shape and strides, and the zip's stored (uncompressed) entries give where each
storage's bytes are, so tensors are plain ranges of one memory-mapped file and the merge's C loop reads them
in place, without torch and without unpickling a byte of tensor data.

Only what a weights-only load accepts is understood here: the tensor-rebuild functions, storage types and
OrderedDict. Any other global (a Lightning callback, a numpy scalar) makes ``parse`` return None and the
checkpoint goes to ``torch.load(weights_only=True)``, which accepts or refuses it as before; nothing the pickle
names is ever imported or called.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from merge.header import ITEMSIZE, TensorInfo, regular_file

# storage class name -> safetensors dtype
STORAGES = {"FloatStorage": "F32", "HalfStorage": "F16", "BFloat16Storage": "BF16", "DoubleStorage": "F64",
            "LongStorage": "I64", "IntStorage": "I32", "ShortStorage": "I16", "CharStorage": "I8",
            "ByteStorage": "U8", "BoolStorage": "BOOL"}  # fmt: skip
_MAX_PICKLE = 256 * 2**20  # a state dict's pickle is a few MB; more is not a checkpoint we can trust to parse


class Unsupported(Exception):
    """Something this parser does not understand: the caller falls back to torch's own weights-only load."""


class _Immutable:
    """Refuses BUILD: a pickle that sets attributes on what it made is not a state dict torch.save wrote."""

    __slots__ = ()

    def __setstate__(self, state) -> None:
        raise Unsupported(f"the pickle sets the state of a {type(self).__name__.strip('_')}")


@dataclass(frozen=True)
class _Storage(_Immutable):
    dtype: str
    key: str
    numel: int


@dataclass(frozen=True)
class TensorRef(_Immutable):
    storage: _Storage
    offset: int  # in elements
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    @property
    def contiguous(self) -> bool:
        expected, step = [], 1
        for d in reversed(self.shape):
            expected.append(step)
            step *= d
        return all(s == e for s, e, d in zip(self.stride, reversed(expected), self.shape, strict=True) if d != 1)


@dataclass(frozen=True)
class _StorageType(_Immutable):
    """``torch.FloatStorage`` and its kin, as a pickle names them: made anew for every name a pickle looks up,
    so that nothing one file does can reach the next (they are never shared between parses)."""

    dtype: str


class _StateDict(dict):
    """``collections.OrderedDict`` as torch.save writes a module's state dict: items, then a BUILD that sets its
    ``_metadata`` (the modules' versions), which is dropped. Any other state is refused."""

    def __setstate__(self, state) -> None:
        if not (isinstance(state, dict) and set(state) <= {"_metadata"}):
            raise Unsupported("a state dict with state other than _metadata")


def _rebuild_tensor(storage, offset, size, stride, *_rest) -> TensorRef:
    if not isinstance(storage, _Storage) or not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise Unsupported("a tensor without a storage, or before its start")
    if not (isinstance(size, tuple) and isinstance(stride, tuple) and len(size) == len(stride)):
        raise Unsupported("a tensor with an odd shape")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (*size, *stride)):
        raise Unsupported("a tensor with an odd shape")
    return TensorRef(storage, offset, tuple(size), tuple(stride))


def _rebuild_parameter(data, *_rest):
    if not isinstance(data, TensorRef):
        raise Unsupported("a parameter without a tensor")
    return data


# What a weights-only state dict may name. Values are constructors called per lookup, never shared objects.
_GLOBALS: dict[tuple[str, str], Callable[[], object]] = {
    ("torch._utils", "_rebuild_tensor_v2"): lambda: _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): lambda: _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): lambda: _rebuild_parameter,
    ("collections", "OrderedDict"): lambda: _StateDict,
    **{("torch", name): partial(_StorageType, dtype) for name, dtype in STORAGES.items()},
}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        make = _GLOBALS.get((module, name))
        if make is None:
            raise Unsupported(f"the pickle names {module}.{name}")
        return make()

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise Unsupported("an unknown persistent id")
        kind, key, numel = pid[1], pid[2], pid[4]
        if not isinstance(kind, _StorageType) or not isinstance(key, str) or not isinstance(numel, int):
            raise Unsupported("an unknown storage")
        if isinstance(numel, bool) or numel < 0:
            raise Unsupported("a storage of a negative size")
        return _Storage(kind.dtype, key, numel)


def _data_range(f, info: zipfile.ZipInfo, file_size: int) -> int:
    """Where an entry's bytes start: after its local header, whose name and extra lengths may differ from the
    central directory's. The local header must name the same file and the bytes must end inside the file."""
    f.seek(info.header_offset)
    local = f.read(30)
    if len(local) != 30 or local[:4] != b"PK\x03\x04":
        raise Unsupported("a damaged zip entry")
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    if f.read(name_len) != info.orig_filename.encode("utf-8" if info.flag_bits & 0x800 else "cp437"):
        raise Unsupported("a zip entry whose local header names another file")
    start = info.header_offset + 30 + name_len + extra_len
    if start + info.file_size > file_size:
        raise Unsupported("a zip entry that runs past the end of the file")
    return start


def _last_element(ref: TensorRef) -> int:
    return ref.offset + sum((d - 1) * s for d, s in zip(ref.shape, ref.stride, strict=True))


@dataclass
class Parsed:
    tensors: dict[str, TensorInfo]  # start/end: absolute offsets in the file (contiguous tensors)
    refs: dict[str, TensorRef]
    storage_start: dict[str, int]  # storage key -> absolute offset of its bytes


def parse(path: Path) -> Parsed | None:
    """The zip checkpoint's state dict (a nested ``state_dict`` unwrapped), or None where only torch can tell.
    A path that is not a regular file (a FIFO would block the open forever) is a CheckpointError."""
    regular_file(path)
    try:
        with open(path, "rb") as f, zipfile.ZipFile(f) as z:
            return _parse(f, z, os.fstat(f.fileno()).st_size)
    except Exception:  # noqa: BLE001 - a damaged archive raises anything: torch's loader has the last word on it
        return None


def _parse(f, z: zipfile.ZipFile, file_size: int) -> Parsed | None:
    infos = {i.filename: i for i in z.infolist()}
    if len(infos) != len(z.infolist()):  # torch reads the first of two same-named members, zipfile the last
        raise Unsupported("two zip members of one name")
    pickles = [n for n in infos if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
        return None
    root = pickles[0].rsplit("/", 1)[0]
    order = infos.get(f"{root}/byteorder")
    if order is not None and z.read(order).strip() != b"little":
        return None
    if infos[pickles[0]].file_size > _MAX_PICKLE:
        return None
    obj = _Unpickler(io.BytesIO(z.read(pickles[0]))).load()
    while isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        return None
    refs = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, TensorRef)}
    if not refs:
        return None
    starts: dict[str, int] = {}
    kinds: dict[str, tuple[str, int]] = {}
    tensors: dict[str, TensorInfo] = {}
    for name, ref in refs.items():
        key = ref.storage.key
        # torch loads a storage once, as its first mention says; a later mention of another type or size
        # would be read differently here: such a file is torch's to read (or refuse)
        if kinds.setdefault(key, (ref.storage.dtype, ref.storage.numel)) != (ref.storage.dtype, ref.storage.numel):
            raise Unsupported("a storage named with two types or sizes")
        if key not in starts:
            entry = infos.get(f"{root}/data/{key}")
            if entry is None or entry.compress_type != zipfile.ZIP_STORED:
                return None
            if entry.file_size != ref.storage.numel * ITEMSIZE[ref.storage.dtype]:  # torch refuses both too
                raise Unsupported("a storage shorter or longer than its member")
            starts[key] = _data_range(f, entry, file_size)
        size = ITEMSIZE[ref.storage.dtype]
        # every byte the tensor covers lies inside its storage: nothing before it (offset >= 0, checked when
        # rebuilt), nothing past it; an empty tensor covers none, but its offset still may not pass the end
        if ref.offset > ref.storage.numel or (all(ref.shape) and _last_element(ref) >= ref.storage.numel):
            raise Unsupported("a tensor beyond its storage")
        start = starts[key] + ref.offset * size
        end = start + math.prod(ref.shape) * size if ref.contiguous else start
        tensors[name] = TensorInfo(ref.storage.dtype, ref.shape, start, end)
    return Parsed(tensors, refs, starts)
