"""merge/fused.py: the C kernel and the torch path store the same bits and agree on finiteness."""

import platform
import shutil
import sys
from pathlib import Path

import pytest
import torch

from merge import fused
from merge.direct import Runs, aligned
from tests.conftest import needs_kernel, same_bits

DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _cpu_has(*flags: str) -> bool:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    have = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return all(f in have for f in flags)


@pytest.mark.skipif(
    not (sys.platform.startswith("linux") and platform.machine() == "x86_64" and shutil.which("cc")),
    reason="the kernel is built for x86-64 where a C compiler is found",
)
def test_the_kernel_is_built_and_used_where_it_can_be():
    # the extension is optional at install: this is what notices a build that failed quietly
    if _cpu_has("avx2", "fma", "f16c"):
        assert fused.kernel() is not None


def inputs(n: int, dtypes, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    raw = [torch.randn(n, generator=g) * 4 for _ in range(3)]
    if n > 20:  # specials: NaN, both infinities, -0.0, values that overflow fp16 only after the add
        raw[0][:6] = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 65000.0, -65000.0])
        raw[1][4:6] = torch.tensor([3000.0, -3000.0])
        raw[2][4:6] = 0.0
    return [x.to(dt) for x, dt in zip(raw, dtypes, strict=True)]


@needs_kernel
@pytest.mark.parametrize("in_dtypes", [(DTYPES[0],) * 3, (DTYPES[1],) * 3, (DTYPES[2],) * 3,
                                       (torch.float32, torch.float16, torch.bfloat16)])  # fmt: skip
@pytest.mark.parametrize("out_dtype", DTYPES)
@pytest.mark.parametrize("m", [1.0, 0.7, -1.3, 0.0])
def test_kernel_and_torch_store_the_same_bits(in_dtypes, out_dtype, m):
    for n in (0, 1, 7, 8, 9, 1000, 70_001):  # vector body, scalar tail, both
        a, b, c = inputs(n, in_dtypes, seed=n)
        fast, slow = torch.empty(n, dtype=out_dtype), torch.empty(n, dtype=out_dtype)
        ok_fast = fused.add_difference(a, b, c, m, fast, fused.Scratch())
        ok_slow = fused.add_difference_torch(a, b, c, m, slow, fused.Scratch())
        assert same_bits(fast, slow), (n, m)
        assert ok_fast == ok_slow == bool(torch.isfinite(slow).all()), (n, m)


@needs_kernel
@pytest.mark.parametrize("out_dtype", DTYPES)
def test_kernel_reports_each_kind_of_non_finite_output(out_dtype):
    half_max = 40000.0 if out_dtype == torch.float16 else 3e38  # twice that overflows the output dtype
    for a_value, b_value in ((0.0, float("nan")), (0.0, float("inf")), (half_max, half_max), (half_max, 0.0)):
        for pos in (3, 35):  # in the vector body, then in the scalar tail
            a, b, c = torch.zeros(37), torch.zeros(37), torch.zeros(37)
            a[pos], b[pos] = a_value, b_value
            out = torch.empty(37, dtype=out_dtype)
            finite = fused.add_difference(a, b, c, 1.0, out, fused.Scratch())
            assert finite == (b_value == 0.0), (a_value, b_value, pos)
            assert finite == bool(torch.isfinite(out).all())


def test_non_contiguous_or_other_dtypes_take_the_torch_path():
    a = torch.randn(16, 8).t()  # not contiguous
    b, c = torch.randn(8, 16), torch.randn(8, 16, dtype=torch.float64)
    out = torch.empty(8, 16, dtype=torch.float16)
    assert fused.add_difference(a, b, c, 1.0, out, fused.Scratch())
    assert torch.equal(out, (a.float() - (c.float() - b)).half())


def test_aligned_walks_tensors_cut_at_different_places_in_step():
    a = Runs("F16", [(1000, 3, 900, 1500), (2000, 5, 2000, 2500)])  # a diffusers concatenation (address, count, lo, hi)
    b = Runs("F32", [(5000, 8, 5000, 6000)])
    c = Runs("F16", [(7000, 1, 7000, 7500), (8000, 7, 8000, 8500)])
    assert list(aligned(a, b, c)) == [(1, [(1000, 900, 1500), (5000, 5000, 6000), (7000, 7000, 7500)]),
                                      (2, [(1002, 900, 1500), (5004, 5000, 6000), (8000, 8000, 8500)]),
                                      (5, [(2000, 2000, 2500), (5012, 5000, 6000), (8004, 8000, 8500)])]  # fmt: skip
    assert list(aligned(Runs("F16", []), Runs("F16", []))) == []


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_the_c_transpose_matches_torch_on_a_non_square_matrix(dtype):
    src = torch.arange(70 * 130, dtype=torch.float32).reshape(70, 130).to(dtype)  # crosses the 64-item tiles
    dst = torch.empty(130, 70, dtype=dtype)
    s, d, size = src.data_ptr(), dst.data_ptr(), src.numel() * src.element_size()
    fused.kernel().transpose(s, s, s + size, d, d, d + size, 70, 130, src.element_size())
    assert torch.equal(dst, src.t())


@needs_kernel
def test_the_c_loop_refuses_an_access_past_the_memory_it_is_given():
    """Whatever the caller computed, the loop holds each pointer to the end of its memory: no read or write
    outside it (a malformed file's last line of defence)."""
    k = fused.kernel()
    x = torch.zeros(64, dtype=torch.float16)
    p, lo, hi = x.data_ptr(), x.data_ptr(), x.data_ptr() + 128
    with pytest.raises(ValueError, match="out-of-range"):
        k.add_difference(p, lo, hi, 0, p, lo, hi, 0, p, lo, hi, 0, p, lo, hi, 0, 65, 1.0)  # one element too many
    with pytest.raises(ValueError, match="out-of-range"):
        k.add_difference(p + 2, lo, hi, 0, p, lo, hi, 0, p, lo, hi, 0, p, lo, hi, 0, 64, 1.0)  # one element in
    with pytest.raises(ValueError, match="out-of-range"):
        k.convert(p - (1 << 28), lo, hi, 0, p, lo, hi, 0, 8)  # a negative offset: before its memory
    with pytest.raises(ValueError, match="out-of-range"):
        k.copy_bytes(p, lo, hi, p + 64, lo, hi, 65)
    with pytest.raises(ValueError, match="out-of-range"):
        k.transpose(p, lo, hi, p, lo, hi, 9, 8, 2)
    assert k.add_difference(p, lo, hi, 0, p, lo, hi, 0, p, lo, hi, 0, p, lo, hi, 0, 64, 1.0)  # exactly its memory
