"""The merge's arithmetic on CPU tensors: ``out = A - M * (C - B)`` in fp32, stored in out's dtype, with a report
of whether every stored value is finite. (merge.direct calls the same C loop on memory-mapped bytes, without
torch; this module serves the tensors it cannot do.)

Two implementations give the same bits (tests/test_fused.py holds them to it):
- ``merge._fused``, merge/_fused.c, built at install where a C compiler is found: one pass over the inputs,
  about twice as fast as torch on two cores, because torch needs seven passes for this formula;
- torch ops over cache-sized fp32 chunks: wherever the C module is missing, the CPU lacks AVX2/FMA/F16C, a
  tensor is not contiguous or has another dtype, or ``INPAINT_ADVISOR_NO_KERNEL=1`` asks for it.
"""

from __future__ import annotations

from functools import cache
from types import ModuleType
from typing import TYPE_CHECKING

from data import settings
from merge.safetensors_io import dtype_name

if TYPE_CHECKING:
    import torch

CHUNK = 1 << 18  # elements per torch step: the fp32 buffers stay in cache
CODES = {"F16": 0, "BF16": 1, "F32": 2}  # merge/_fused.c's dtype numbers, by safetensors dtype name


@cache
def kernel() -> ModuleType | None:
    """The C module when it is built, usable on this CPU and not switched off; else None."""
    if settings.current().no_kernel:
        return None
    try:
        from merge import _fused
    except ImportError:
        return None
    return _fused if _fused.available() else None


class Scratch:
    """Per-thread fp32 buffers for the torch path, made on first use (the C path needs none)."""

    def __init__(self):
        self._buffers: tuple[torch.Tensor, torch.Tensor] | None = None

    def buffers(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._buffers is None:
            import torch

            self._buffers = (torch.empty(CHUNK, dtype=torch.float32), torch.empty(CHUNK, dtype=torch.float32))
        d, t = self._buffers
        return (d, t) if n == CHUNK else (d[:n], t[:n])


def add_difference(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, m: float, out: torch.Tensor, s: Scratch) -> bool:
    """out = A - M * (C - B) for CPU tensors of one shape; returns whether every value of out is finite."""
    fast = kernel()
    tensors = (a, b, c, out)
    codes = [CODES.get(dtype_name(x.dtype)) for x in tensors]
    if fast is not None and None not in codes and all(x.is_contiguous() for x in tensors):
        args = [v for x, code in zip(tensors, codes, strict=True)
                for v in (x.data_ptr(), x.data_ptr(), x.data_ptr() + x.numel() * x.element_size(), code)]  # fmt: skip
        return fast.add_difference(*args, out.numel(), m)
    return add_difference_torch(a, b, c, m, out, s)


def add_difference_torch(a, b, c, m: float, out: torch.Tensor, s: Scratch) -> bool:
    """The same with torch ops, in fp32 chunks that stay in cache (no full-size fp32 temporaries)."""
    import torch

    if a.numel() == 0:
        return True
    limit = torch.finfo(out.dtype).max
    # Finiteness, cheaply: a sum of squares below (limit/2)^2 proves every value finite and below limit even
    # after fp32 rounding of the sum (relative error below CHUNK * 2^-24 = 2^-6); NaN/Inf make it NaN/Inf. Only
    # a chunk that fails this (in practice: one holding NaN/Inf) pays for the exact check of what is stored.
    safe = (limit / 2) ** 2
    finite = True
    # split() makes every chunk's views in one call: slicing four tensors per chunk cost ~10% in Python
    chunks = zip(*(x.reshape(-1).split(CHUNK) for x in (a, b, c, out)), strict=True)
    for ac, bc, cc, oc in chunks:
        d, t = s.buffers(ac.numel())
        d.copy_(cc)
        t.copy_(bc)
        d.sub_(t)
        t.copy_(ac)
        t.sub_(d, alpha=m)
        oc.copy_(t)
        if finite and not torch.dot(t, t).item() < safe:
            finite = bool(torch.isfinite(oc).all())
    return finite
