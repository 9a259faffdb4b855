"""How far a fine-tune's UNet is from its base's: the relative distance ||B - C|| / ||C|| over a sample of the
tensors both files hold with one shape, read from their safetensors data (no torch, a few MB of each file).

Why a sample: the ratio is a sum over the weights, and a spread of every UNet block's tensors (every k-th of
the common ones, in name order) estimates it within a few percent of the whole for a fraction of the read.
The advice uses it to weigh the official inpainting model (which paints in the base's look) against a build
(which keeps the fine-tune's).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from merge.header import CheckpointError, TensorInfo, read_header

UNET_PREFIXES = ("model.diffusion_model.",)
SAMPLE_BYTES = 16 * 2**20  # of each file: a 2 GB SD 1.5 file is read at about 1 %
_FLOATS = ("F16", "BF16", "F32")


@dataclass(frozen=True)
class BaseDistance:
    relative: float  # ||B - C|| / ||C|| over the sampled tensors
    base: str  # the base file's name
    tensors: int  # how many tensors were compared

    def __str__(self) -> str:
        return f"{self.relative:.1%} from {self.base} ({self.tensors} tensors compared)"


def _as_float(raw: bytes, dtype: str):
    import numpy as np

    if dtype == "F16":
        return np.frombuffer(raw, dtype="<f2").astype(np.float64)
    if dtype == "BF16":  # the upper half of a float32
        return (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return np.frombuffer(raw, dtype="<f4").astype(np.float64)


SAME_ARCHITECTURE = 0.9  # of B's UNet tensors that C holds with one shape (an inpainting UNet's conv_in differs)


def _comparable(b: dict[str, TensorInfo], c: dict[str, TensorInfo]) -> list[str]:
    """B's UNet tensors that C holds with the same shape; none where the two are not one architecture (SDXL and
    SD 1.5 share a few shapes by chance)."""
    unet = [k for k, t in b.items() if k.startswith(UNET_PREFIXES) and t.dtype in _FLOATS and t.numel > 0]
    same = sorted(k for k in unet if k in c and c[k].dtype in _FLOATS and b[k].shape == c[k].shape)
    return same if unet and len(same) >= SAME_ARCHITECTURE * len(unet) else []


def _sample(names: list[str], b: dict[str, TensorInfo], budget: int) -> list[str]:
    """Every k-th name, k chosen so that the picked tensors of ``b`` fit ``budget`` bytes (at least one)."""
    total = sum(b[n].nbytes for n in names)
    step = max(1, -(-total // budget)) if total > budget else 1
    picked: list[str] = []
    used = 0
    for name in names[::step]:
        if picked and used + b[name].nbytes > budget:
            continue
        picked.append(name)
        used += b[name].nbytes
    return picked


def _read(fd: int, t: TensorInfo) -> bytes:
    raw = os.pread(fd, t.end - t.start, t.start)
    if len(raw) != t.end - t.start:
        raise CheckpointError("a tensor's data ends early: the file is truncated")
    return raw


def base_distance(b_path: Path, c_path: Path, *, budget: int = SAMPLE_BYTES) -> BaseDistance | None:
    """The relative distance of ``b_path``'s UNet from ``c_path``'s, or None when the two files share no UNet
    tensor of one shape (not the same architecture). Both must be safetensors files; a malformed one is a
    CheckpointError."""
    import numpy as np

    b, c = read_header(b_path), read_header(c_path)
    names = _sample(_comparable(b.tensors, c.tensors), b.tensors, budget)
    if not names:
        return None
    diff = norm = 0.0
    b_fd, c_fd = os.open(b_path, os.O_RDONLY), os.open(c_path, os.O_RDONLY)
    try:
        for name in names:
            x = _as_float(_read(b_fd, b.tensors[name]), b.tensors[name].dtype)
            y = _as_float(_read(c_fd, c.tensors[name]), c.tensors[name].dtype)
            finite = np.isfinite(x) & np.isfinite(y)  # a stray NaN says nothing of the distance
            x, y = x[finite], y[finite]
            diff += float(((x - y) ** 2).sum())
            norm += float((y**2).sum())
    finally:
        os.close(b_fd)
        os.close(c_fd)
    if norm == 0.0:
        return None
    return BaseDistance(round((diff / norm) ** 0.5, 4), c_path.name, len(names))
