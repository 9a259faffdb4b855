"""Run a merge's tensors on the CPU without torch: every tensor is a run of bytes in a memory map (an input's
or the output's), and merge._fused computes, converts and copies between those addresses.

torch's import (~2 s) was the largest single cost of a CPU merge of SD1.5; where the C loop is built and the
inputs' tensors are plain ranges of safetensors files (diffusers folders included: concatenations are runs
in a row, SDXL's transposed text_projection is transposed into a buffer first), the merge never imports it.
A tensor this module cannot do (a pickle's tensors, an F64/F8 dtype) gets no task, and the engine runs it
through torch (merge.engine._apply): the same bits.
"""

from __future__ import annotations

import ctypes
import math
import mmap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING

from merge.fused import CODES
from merge.header import ITEMSIZE
from merge.pages import Addresses

if TYPE_CHECKING:
    from merge.plan import Entry, MergePlan
    from merge.safetensors_io import SafetensorsWriter

Task = Callable[[], bool]  # fills one output tensor; returns False if it holds NaN/Inf


@dataclass
class Runs:
    """One tensor's bytes: ``(address, element count, lo, hi)`` runs, in order; ``[lo, hi)`` is the memory the
    run lies in (its mapping), which the C loop holds every access to."""

    dtype: str
    runs: list[tuple[int, int, int, int]]

    @property
    def itemsize(self) -> int:
        return ITEMSIZE[self.dtype]


def _runs(held: Addresses, segments: list[tuple[mmap.mmap, int, int]], dtype: str) -> Runs:
    size = ITEMSIZE[dtype]
    return Runs(dtype, [(held.of(m) + start, (end - start) // size, held.of(m), held.of(m) + len(m))
                        for m, start, end in segments if end > start])  # fmt: skip


def aligned(*tensors: Runs) -> Iterator[tuple[int, list[tuple[int, int, int]]]]:
    """Walk tensors of one element count, cut into runs at different places, as stretches where each one is
    contiguous: ``(element count, [(address, lo, hi) in each tensor])``, ``[lo, hi)`` the memory it lies in."""
    index = [0] * len(tensors)
    used = [0] * len(tensors)  # elements already walked of each tensor's current run
    while all(i < len(t.runs) for i, t in zip(index, tensors, strict=True)):
        n = min(t.runs[i][1] - u for t, i, u in zip(tensors, index, used, strict=True))
        yield n, [(t.runs[i][0] + u * t.itemsize, *t.runs[i][2:]) for t, i, u in zip(tensors, index, used, strict=True)]
        for k, t in enumerate(tensors):
            used[k] += n
            if used[k] == t.runs[index[k]][1]:
                index[k], used[k] = index[k] + 1, 0


def tasks_for(plan: MergePlan, writer: SafetensorsWriter, fast: ModuleType, held: Addresses) -> dict[str, Task]:
    """A task for every entry that can run without torch."""
    tasks = {}
    for entry in plan.entries:
        task = _task(entry, plan, writer, fast, held)
        if task is not None:
            tasks[entry.name] = task
    return tasks


def _task(entry: Entry, plan: MergePlan, writer: SafetensorsWriter, fast: ModuleType, held: Addresses) -> Task | None:
    mapping, start, end = writer.span(entry.name)
    out = _runs(held, [(mapping, start, end)] if mapping is not None else [], entry.dtype)
    inputs: list[Runs] = []
    transposed: dict[int, tuple[Runs, tuple[int, ...]]] = {}  # input index -> (stored runs, shape as stored)
    for src in plan.sources_of(entry):
        info = src.tensors[entry.name]
        segments = src.segments(entry.name)
        if segments is None:
            stored = src.transposed(entry.name)
            if stored is None or len(stored) > 1 or len(info.shape) != 2:
                return None
            transposed[len(inputs)] = (_runs(held, stored, info.dtype), info.shape[::-1])
            segments = []  # a buffer filled when the task runs
        inputs.append(_runs(held, segments, info.dtype))
    rule = entry.rule
    if plan.multiplier == 0.0 and rule in ("add", "channels"):
        rule = "copy"  # M = 0: A's tensors, as they are (converted to the output dtype)
    b_shape = plan.b.tensors[entry.name].shape if rule == "channels" else ()
    task = _rule_task(rule, fast, inputs, out, plan.multiplier, entry.shape, b_shape)
    if task is None or not transposed or out.runs == []:
        return task

    def with_transposes() -> bool:
        buffers, ready = [], list(inputs)
        for i, (stored, (rows, cols)) in transposed.items():
            buffers.append(buffer := bytearray(rows * cols * stored.itemsize))
            address = ctypes.addressof(ctypes.c_char.from_buffer(buffer))
            src, _, lo, hi = stored.runs[0]
            fast.transpose(src, lo, hi, address, address, address + len(buffer), rows, cols, stored.itemsize)
            ready[i] = Runs(stored.dtype, [(address, rows * cols, address, address + len(buffer))])
        run = _rule_task(rule, fast, ready, out, plan.multiplier, entry.shape, b_shape)
        assert run is not None  # the task above, of the same rule and dtypes (a buffer's runs are one each)
        return run()  # buffers live until here

    return with_transposes


def _rule_task(rule: str, fast: ModuleType, inputs: list[Runs], out: Runs, m: float, shape, b_shape) -> Task | None:
    if rule in ("copy", "marker"):
        return _copy(fast, inputs[0], out)
    if any(t.dtype not in CODES for t in (*inputs, out)):
        return None
    if rule == "add":
        a, b, c = inputs
        return _add(fast, a, b, c, out, m)
    if rule == "channels" and all(len(t.runs) <= 1 for t in (*inputs, out)):
        a, b, c = inputs
        return _channels(fast, a, b, c, out, m, shape, b_shape)
    return None


def _copy(fast: ModuleType, src: Runs, out: Runs) -> Task | None:
    if src.dtype == out.dtype:

        def copy() -> bool:
            for n, (s, o) in aligned(src, out):
                fast.copy_bytes(*s, *o, n * out.itemsize)
            return True  # copies are not checked for NaN/Inf, as on the torch path

        return copy
    if src.dtype not in CODES or out.dtype not in CODES:
        return None

    def convert() -> bool:
        for n, (s, o) in aligned(src, out):
            fast.convert(*s, CODES[src.dtype], *o, CODES[out.dtype], n)
        return True

    return convert


def _add(fast: ModuleType, a: Runs, b: Runs, c: Runs, out: Runs, m: float) -> Task:
    codes = [CODES[t.dtype] for t in (a, b, c, out)]

    def add() -> bool:
        finite = True
        for n, addresses in aligned(a, b, c, out):
            args = [v for span, code in zip(addresses, codes, strict=True) for v in (*span, code)]
            finite &= fast.add_difference(*args, n, m)
        return finite

    return add


def _channels(fast, a: Runs, b: Runs, c: Runs, out: Runs, m: float, a_shape, b_shape) -> Task:
    """The first conv: per output channel, the delta on B's input channels, A's extra channels copied."""
    rows, per_row_a = a_shape[0], math.prod(a_shape[1:])
    per_row_b = math.prod(b_shape[1:])
    codes = [CODES[t.dtype] for t in (a, b, c, out)]

    def channels() -> bool:
        if not a.runs:
            return True
        (pa, _, *ma), (pb, _, *mb), (pc, _, *mc), (po, _, *mo) = a.runs[0], b.runs[0], c.runs[0], out.runs[0]
        finite = True
        for r in range(rows):
            ra, ro = pa + r * per_row_a * a.itemsize, po + r * per_row_a * out.itemsize
            rb, rc = pb + r * per_row_b * b.itemsize, pc + r * per_row_b * c.itemsize
            finite &= fast.add_difference(ra, *ma, codes[0], rb, *mb, codes[1], rc, *mc, codes[2], ro, *mo, codes[3],
                                          per_row_b, m)  # fmt: skip
            rest_a, rest_o = ra + per_row_b * a.itemsize, ro + per_row_b * out.itemsize
            fast.convert(rest_a, *ma, codes[0], rest_o, *mo, codes[3], per_row_a - per_row_b)
        return finite

    return channels
