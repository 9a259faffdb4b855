"""How far a fine-tune's UNet is from its base's: the relative distance ||B - C|| / ||C|| over the tensors both
files hold with one shape, estimated from a slice of every one of them (no torch, a few MB of each file).

Why a slice of every tensor rather than whole tensors: fine-tunes move some layers far more than others (the
cross-attention's to_k/to_v most of all), so a sample of a few whole tensors can miss what moved. Each tensor's
slice (the same elements of B and C, a contiguous run from its middle) stands for the whole tensor: its sums are
scaled by the tensor's size over the slice's, so that every tensor weighs what it weighs in the whole norm.
The advice uses the figure to weigh the official inpainting model (which paints in the base's look) against a
build (which keeps the fine-tune's).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from merge.header import CheckpointError, TensorInfo, read_header

UNET_PREFIXES = ("model.diffusion_model.",)
SAMPLE_BYTES = 16 * 2**20  # of each file, spread over its tensors: a 2 GB SD 1.5 file is read at about 1 %
MIN_SLICE = 256  # elements of a tensor's slice, at least (a bias or a norm is read whole)
SAME_ARCHITECTURE = 0.9  # of B's UNet tensors that C holds with one shape (an inpainting UNet's conv_in differs)
_FLOATS = {"F16": 2, "BF16": 2, "F32": 4}


@dataclass(frozen=True)
class BaseDistance:
    relative: float  # ||B - C|| / ||C||, estimated
    base: str  # the base file's name
    tensors: int  # how many tensors were compared (a slice of each)

    def __str__(self) -> str:
        return f"{self.relative:.1%} from {self.base}, over {self.tensors} of its tensors"


def _as_float(raw: bytes, dtype: str):
    import numpy as np

    if dtype == "F16":
        return np.frombuffer(raw, dtype="<f2").astype(np.float64)
    if dtype == "BF16":  # the upper half of a float32
        return (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return np.frombuffer(raw, dtype="<f4").astype(np.float64)


def _comparable(b: dict[str, TensorInfo], c: dict[str, TensorInfo]) -> list[str]:
    """B's UNet tensors that C holds with the same shape; none where the two are not one architecture (SDXL and
    SD 1.5 share a few shapes by chance)."""
    unet = [k for k, t in b.items() if k.startswith(UNET_PREFIXES) and t.dtype in _FLOATS and t.numel > 0]
    same = sorted(k for k in unet if k in c and c[k].dtype in _FLOATS and b[k].shape == c[k].shape)
    return same if unet and len(same) >= SAME_ARCHITECTURE * len(unet) else []


def _slice(t: TensorInfo, elements: int) -> tuple[int, int]:
    """(first element, count) of the tensor's slice: ``elements`` of it from its middle, or all of it."""
    count = min(t.numel, elements)
    return (t.numel - count) // 2, count


def _read(fd: int, t: TensorInfo, first: int, count: int) -> bytes:
    size = _FLOATS[t.dtype]
    raw = os.pread(fd, count * size, t.start + first * size)
    if len(raw) != count * size:
        raise CheckpointError("a tensor's data ends early: the file is truncated")
    return raw


def base_distance(b_path: str | os.PathLike, c_path: str | os.PathLike, *,
                  budget: int = SAMPLE_BYTES) -> BaseDistance | None:  # fmt: skip
    """The relative distance of ``b_path``'s UNet from ``c_path``'s, or None when the two files share no UNet
    (not one architecture) or C's sampled weights are all zero. Both must be safetensors files; a malformed one
    is a CheckpointError. Reads at most about ``budget`` bytes of each, whatever the headers claim."""
    import numpy as np

    b_path, c_path = Path(b_path), Path(c_path)
    b, c = read_header(b_path), read_header(c_path)
    names = _comparable(b.tensors, c.tensors)
    if not names:
        return None
    widest = max(max(_FLOATS[b.tensors[n].dtype], _FLOATS[c.tensors[n].dtype]) for n in names)
    per_tensor = max(MIN_SLICE, budget // (widest * len(names)))  # elements: neither file is read past budget
    diff = norm = 0.0
    b_fd, c_fd = os.open(b_path, os.O_RDONLY), os.open(c_path, os.O_RDONLY)
    try:
        for name in names:
            tb, tc = b.tensors[name], c.tensors[name]
            first, count = _slice(tb, per_tensor)
            x = _as_float(_read(b_fd, tb, first, count), tb.dtype)
            y = _as_float(_read(c_fd, tc, first, count), tc.dtype)
            finite = np.isfinite(x) & np.isfinite(y)  # a stray NaN says nothing of the distance
            if not finite.any():
                continue
            weight = tb.numel / int(finite.sum())  # the slice stands for the whole tensor
            diff += weight * float(((x[finite] - y[finite]) ** 2).sum())
            norm += weight * float((y[finite] ** 2).sum())
    finally:
        os.close(b_fd)
        os.close(c_fd)
    if norm == 0.0:
        return None
    return BaseDistance(round((diff / norm) ** 0.5, 4), c_path.name, len(names))
