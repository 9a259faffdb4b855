"""Open any checkpoint as a ``TensorSource``: names, dtypes and shapes up front, tensors read one at a time.

- ``.safetensors``: header only, then positioned reads.
- ``.ckpt`` / ``.pt`` / ``.pth`` / ``.bin`` in torch's zip format: tensors located by a weights-only parse of
  the pickle (merge.zip_pickle) and read in place from a memory map, like safetensors, without torch.
- other pickles, and zip ones that parse cannot read: ``torch.load(weights_only=True, mmap=True)``; a pickle
  that needs anything beyond tensors and containers is refused, never executed. A nested ``state_dict`` is
  unwrapped.
- diffusers folders (SD 1.x/2.x, SDXL): component files converted on the fly to single-file names.

Opening a safetensors file or a diffusers folder does not import torch (see safetensors_io).
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import pickle
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from merge import diffusers_keys, zip_pickle
from merge.header import CheckpointError, Header, TensorInfo, read_header, regular_file
from merge.safetensors_io import SafetensorsWriter, dtype_name, read_into, typed_view

if TYPE_CHECKING:
    import torch

PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin"}


class TensorSource:
    path: Path
    kind: str
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]

    def read(self, name: str, buffer: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def files(self) -> list[Path]:
        """The files whose bytes make up this checkpoint (for hashing and free-space checks)."""
        return [self.path]

    def segments(self, name: str) -> list[tuple[mmap.mmap, int, int]] | None:
        """``name``'s bytes as they are, in order, as ``(mapping, start, end)`` ranges of mapped files (one for a
        safetensors tensor, several for a concatenation); None where reading needs more (a transpose, a
        pickle, an unmapped file). What merge.direct works on, without torch."""
        return None

    def transposed(self, name: str) -> list[tuple[mmap.mmap, int, int]] | None:
        """Where ``segments`` is None because ``name`` is stored transposed (2-D): the stored tensor's ranges."""
        return None

    def byte_ranges(self, name: str) -> list[tuple[mmap.mmap, int, int]]:
        """``(mapping, start, end)`` of the mapped file bytes that reading ``name`` touches, so that they can be
        read ahead (merge.pages); empty where reads do not go through a mapping."""
        return self.segments(name) or self.transposed(name) or []

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class SafetensorsSource(TensorSource):
    """Tensors are read-only views of a memory map: no copy, and the pages belong to the page cache, not to
    this process's anonymous memory."""

    kind = "safetensors"

    def __init__(self, path: Path, header: Header | None = None):
        self.path = path
        self.header = header or read_header(path)
        self.tensors = self.header.tensors
        self.metadata = self.header.metadata
        regular_file(path)  # (a header read elsewhere: the file is checked again before it is opened)
        self._fd = os.open(path, os.O_RDONLY)
        self._mm = mmap.mmap(self._fd, 0, access=mmap.ACCESS_READ) if self.header.file_size else None

    def read(self, name: str, buffer: torch.Tensor | None = None) -> torch.Tensor:
        info = self.tensors[name]
        if self._mm is None:
            if buffer is None:
                import torch

                buffer = torch.empty(info.nbytes, dtype=torch.uint8)
            return read_into(self._fd, info, buffer)
        return typed_view(self._mm, info, info.start)

    def segments(self, name: str) -> list[tuple[mmap.mmap, int, int]] | None:
        info = self.tensors[name]
        if self._mm is None:
            return None
        return [(self._mm, info.start, info.end)] if info.nbytes else []

    def close(self) -> None:
        if self._mm is not None:
            with contextlib.suppress(BufferError):  # views still alive (held by a caller): freed with them
                self._mm.close()
            self._mm = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class WrittenSource(TensorSource):
    """The output of a merge that runs in the same pass (``MergePlan.upstream``), read back from its writer's
    mapping as each tensor is written: the tensor is still in memory, so nothing is read from disk. Its
    layout is known up front; its bytes only once ``bind`` gives it the writer."""

    kind = "written"

    def __init__(self, path: Path, layout: list[tuple[str, str, tuple[int, ...]]]):
        self.path = path
        self.metadata = {}
        self.tensors = {}
        offset = 0
        for name, dtype, shape in layout:  # the writer's own order and offsets
            size = TensorInfo(dtype, tuple(shape)).nbytes
            self.tensors[name] = TensorInfo(dtype, tuple(shape), offset, offset + size)
            offset += size
        self._writer: SafetensorsWriter | None = None

    def bind(self, writer: SafetensorsWriter) -> None:
        if {k: (i.dtype, i.shape) for k, i in writer.infos.items()} != {
                k: (i.dtype, i.shape) for k, i in self.tensors.items()}:  # fmt: skip
            raise ValueError(f"the writer of {self.path} has another layout than the one planned")
        self._writer = writer

    def _bound(self) -> SafetensorsWriter:
        if self._writer is None:
            raise RuntimeError(f"{self.path} is read before its writer exists")
        return self._writer

    def read(self, name: str, buffer: torch.Tensor | None = None) -> torch.Tensor:
        return self._bound().slot(name)

    def segments(self, name: str) -> list[tuple[mmap.mmap, int, int]] | None:
        mapping, start, end = self._bound().span(name)
        if mapping is None:
            return None if end > start else []
        return [(mapping, start, end)] if end > start else []

    def byte_ranges(self, name: str) -> list[tuple[mmap.mmap, int, int]]:
        return []  # written just before it is read: in memory

    def files(self) -> list[Path]:
        return []  # not a file until the merge that writes it commits


def _pickle_kind(path: Path) -> str | None:
    """"zip" (torch.save's format since 1.6), "legacy" (a bare pickle), or None: not a PyTorch checkpoint."""
    regular_file(path)
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):  # pickle protocol 2-5
        return "legacy"
    return None


def pickle_kind(path: Path) -> str:
    """``_pickle_kind``, or a CheckpointError that says what the file looks like where it is no checkpoint."""
    kind = _pickle_kind(path)
    if kind is None:
        with open(path, "rb") as f:
            start = f.read(16)
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (it starts with {start!r}: an error page or "
                              "a text file saved under a model's name?)")  # fmt: skip
    return kind


class ZipPickleSource(TensorSource):
    """A torch zip checkpoint whose tensors are ranges of its stored entries (merge.zip_pickle): mapped and
    read like a safetensors file; a tensor stored with other strides is made contiguous through torch."""

    kind = "pickle"

    def __init__(self, path: Path, parsed: zip_pickle.Parsed):
        self.path = path
        self.parsed = parsed
        self.tensors = parsed.tensors
        self.metadata = {}
        regular_file(path)
        self._fd = os.open(path, os.O_RDONLY)
        self._mm: mmap.mmap | None = mmap.mmap(self._fd, 0, access=mmap.ACCESS_READ)  # None once closed

    def read(self, name: str, buffer: torch.Tensor | None = None) -> torch.Tensor:
        info, ref = self.tensors[name], self.parsed.refs[name]
        if ref.contiguous:
            return typed_view(self._mm, info, info.start)
        import torch

        storage = TensorInfo(info.dtype, (ref.storage.numel,))
        flat = typed_view(self._mm, storage, self.parsed.storage_start[ref.storage.key])
        return torch.as_strided(flat, ref.shape, ref.stride, ref.offset).contiguous()

    def segments(self, name: str) -> list[tuple[mmap.mmap, int, int]] | None:
        info = self.tensors[name]
        if not self.parsed.refs[name].contiguous or self._mm is None:  # (None: closed, like SafetensorsSource's)
            return None
        return [(self._mm, info.start, info.end)] if info.nbytes else []

    def close(self) -> None:
        if self._mm is not None:
            with contextlib.suppress(BufferError):
                self._mm.close()
            self._mm = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class StateDictSource(TensorSource):
    kind = "pickle"

    def __init__(self, path: Path):
        kind = pickle_kind(path)
        import torch

        self.path = path
        try:
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=kind == "zip")
            except RuntimeError as exc:  # some zip checkpoints cannot be memory-mapped
                if "mmap" not in str(exc).lower() and "zip" not in str(exc).lower():
                    raise
                obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            message = str(exc)
            if "weights only" in message.lower() or "weights_only" in message:
                raise CheckpointError(
                    f"{path}: refusing to load this pickle: it needs code execution to unpickle, which could run "
                    f"anything. Convert it to .safetensors with a tool you trust. ({message.splitlines()[0][:200]})"
                ) from None
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({message.splitlines()[0][:200]})"
                                  ) from None  # fmt: skip
        except Exception as exc:  # a damaged or truncated archive: torch raises whatever its reader meets
            first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
            raise CheckpointError(f"{path}: not a readable checkpoint, or truncated ({first})") from None
        while isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict):
            raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict")
        self._sd = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
        if not self._sd:
            raise CheckpointError(f"{path}: holds no tensors")
        try:
            self.tensors = {k: TensorInfo(dtype_name(v.dtype), tuple(v.shape)) for k, v in self._sd.items()}
        except StopIteration:  # a dtype safetensors has no name for (complex, quantized)
            raise CheckpointError(f"{path}: holds tensors of a type a merge cannot use") from None
        self.metadata = {}

    def read(self, name: str, buffer: torch.Tensor | None = None) -> torch.Tensor:
        return self._sd[name].contiguous()


_COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")
_WEIGHT_FILES = ("diffusion_pytorch_model{}.safetensors", "model{}.safetensors")


class DiffusersSource(TensorSource):
    kind = "diffusers"

    def __init__(self, path: Path, prefer_fp16: bool = True):
        if not stat.S_ISDIR(regular_file(path, folder=True).st_mode):
            raise CheckpointError(f"{path}: not a diffusers folder")
        self.path = path
        self.parts: dict[str, SafetensorsSource] = {}
        self.class_name = read_config(path / "model_index.json").get("_class_name")
        for comp in _COMPONENTS:
            folder = path / comp
            if not folder.is_dir():
                continue
            variants = (".fp16", "") if prefer_fp16 else ("", ".fp16")
            found = [folder / pattern.format(v) for v in variants for pattern in _WEIGHT_FILES]
            file = next((f for f in found if f.exists()), None)
            if file is None:
                raise CheckpointError(f"{folder}: no .safetensors weights (only .bin? convert them first)")
            self.parts[comp] = SafetensorsSource(file)
        if "unet" not in self.parts:
            raise CheckpointError(f"{path}: a diffusers folder needs at least unet/")
        sdxl = "text_encoder_2" in self.parts or "add_embedding.linear_1.weight" in self.parts["unet"].tensors
        self.recipes = diffusers_keys.build_recipes({c: list(p.tensors) for c, p in self.parts.items()}, sdxl)
        self.tensors = {name: self._info(r) for name, r in self.recipes.items()}
        self.metadata = {}

    def _info(self, r: diffusers_keys.Recipe) -> TensorInfo:
        infos = [self.parts[r.component].tensors[s] for s in r.sources]
        shape = infos[0].shape
        if r.op == "cat":
            shape = (sum(i.shape[0] for i in infos), *shape[1:])
        elif r.op == "transpose":
            shape = tuple(reversed(shape))
        elif r.op == "conv1x1":
            shape = (*shape, 1, 1)
        return TensorInfo(infos[0].dtype, shape)

    def read(self, name: str, buffer: torch.Tensor | None = None) -> torch.Tensor:
        r = self.recipes[name]
        part = self.parts[r.component]
        if r.op == "cat":
            import torch

            return torch.cat([part.read(s) for s in r.sources], dim=0)
        t = part.read(r.sources[0], buffer)
        if r.op == "transpose":
            return t.t().contiguous()
        if r.op == "conv1x1":
            return t.reshape(*t.shape, 1, 1)
        return t

    def files(self) -> list[Path]:
        return [p.path for p in self.parts.values()]

    def segments(self, name: str) -> list[tuple[mmap.mmap, int, int]] | None:
        r = self.recipes[name]
        if r.op == "transpose":
            return None
        parts = [self.parts[r.component].segments(s) for s in r.sources]  # "cat" is along dim 0: bytes in a row
        runs: list[tuple[mmap.mmap, int, int]] = []
        for p in parts:
            if p is None:
                return None
            runs += p
        return runs

    def transposed(self, name: str) -> list[tuple[mmap.mmap, int, int]] | None:
        r = self.recipes[name]
        return self.parts[r.component].segments(r.sources[0]) if r.op == "transpose" else None

    def close(self) -> None:
        for p in self.parts.values():
            p.close()


MAX_CONFIG = 2**20  # bytes: diffusers configs are a few KB


def read_config(path: Path, *, required: bool = False) -> dict:
    """A diffusers JSON config (model_index.json, unet/config.json): a dict, or one CheckpointError. A missing
    optional one is {}."""
    if not path.exists():
        if required:
            raise CheckpointError(f"{path.parent}: not a diffusers folder (no {path.name})")
        return {}
    size = regular_file(path).st_size  # a FIFO named config.json would block the read forever
    if size > MAX_CONFIG:
        raise CheckpointError(f"{path}: too large for a diffusers config ({size} bytes)")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"{path}: not a readable JSON config ({str(exc)[:120]})") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: not a JSON object")
    return value


def open_checkpoint(path: str | os.PathLike) -> TensorSource:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder")
    if stat.S_ISDIR(regular_file(path, folder=True).st_mode):  # a FIFO, a device or a socket: refused here
        return DiffusersSource(path)
    try:
        kind = _pickle_kind(path)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read ({exc.strerror})") from None
    if kind == "zip":
        parsed = zip_pickle.parse(path)
        if parsed is not None:
            return ZipPickleSource(path, parsed)
    if kind is not None or path.suffix.lower() in PICKLE_SUFFIXES:  # a torch checkpoint, whatever its name
        return StateDictSource(path)
    return SafetensorsSource(path)
