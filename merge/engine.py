"""``out = A + (B - C) * M``, streamed tensor by tensor (domain.md section 5).

A = the official inpainting model, B = the fine-tune, C = the base B came from. Output keys are A's. Floating
tensors present in all three with equal shapes get the delta; the UNet's first conv (A has 9 or 8 input
channels, B and C 4) gets it on channels 0-3 only; integer tensors and keys only in A are copied; keys only in
B are reported; B's ``v_pred``/``ztsnr`` markers are carried over.

Arithmetic is fp32 whatever the inputs, as ``A - M * (C - B)``: the same value as ``A + (B - C) * M``, but when
B == C the subtracted term is +0.0, which leaves every A value (-0.0 included) bit for bit unchanged.

Planning (merge.plan: headers, families, slots, free space) never imports torch, so a bad input is refused at
once. On the CPU, with the C loop built (merge._fused), every tensor that is a plain range of a safetensors file
is merged by merge.direct without torch at all; torch (~2 s to import) is imported only for what remains (a
pickle's tensors, a transposed diffusers tensor, the GPU). Meanwhile threads read the inputs ahead
(merge.readahead) and prepare the output's pages (SafetensorsWriter.start_populating), both through merge.pages.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from merge import direct, fused, hashing, metadata, pages, portable
from merge.checkpoint import WrittenSource
from merge.header import CheckpointError
from merge.plan import Entry, MergeError, MergePlan, certainly_no_gpu, cuda_available, plan_merge
from merge.readahead import read_ahead
from merge.safetensors_io import SafetensorsWriter

if TYPE_CHECKING:
    import torch

ENGINE_VERSION = "1"  # changes when the same inputs would give other bytes: part of a build's recipe
__all__ = ["ENGINE_VERSION", "MergeError", "MergePlan", "MergeResult", "merge", "plan_merge", "run_merge"]


@dataclass
class MergeResult:
    out: Path
    family: str
    variant: str
    tensors: int
    added: int
    channel_merged: list[str]
    copied: int
    only_in_b: list[str]
    mismatched: list[str]
    missing_in_bc: list[str]
    markers: list[str]
    nonfinite: list[str]
    warnings: list[str]
    bytes_written: int
    seconds: float
    device: str
    dtype: str
    multiplier: float
    input_sha256: dict[str, str]
    # the output's, hashed as it was written; null where the header was finished after the data (the inputs'
    # hashes unknown until the merge had read them: a plain `merge`)
    sha256: str | None = None


def _output_error(plan: MergePlan, exc: OSError) -> MergeError:
    """What the filesystem said, in one line, once the work had started (nothing is left under OUT's name)."""
    if exc.errno == errno.ENOSPC:
        return MergeError(f"no space left for {plan.out} ({plan.output_bytes / 1e9:.2f} GB); nothing was written",
                          "space")  # fmt: skip
    if exc.errno == errno.EFBIG:
        return MergeError(f"{plan.out} ({plan.output_bytes / 1e9:.2f} GB) is over this process's file-size limit "
                          "(ulimit -f); nothing was written", "space")  # fmt: skip
    return MergeError(f"cannot write {plan.out}: {exc.strerror or exc}; nothing was written", "output")


def _clean_stale_partials(out: Path) -> None:
    """Remove ``.<OUT>.partial-<pid>`` files left by merges that were killed (their process is gone, or a zombie
    its parent has not reaped)."""
    for p in out.parent.glob(f".{out.name}.partial-*"):
        owner = partial_owner(p)
        if owner is None or not portable.pid_alive(owner):
            p.unlink(missing_ok=True)


def partial_owner(path: Path) -> int | None:
    """The pid in a hidden partial file's name (``.<name>.partial-<pid>``, SafetensorsWriter's), None when the
    name has none."""
    head, sep, pid = path.name.rpartition(".partial-")
    return int(pid) if sep and head.startswith(".") and pid.isdigit() and pid.isascii() else None


# -- arithmetic -------------------------------------------------------------------------------------------------
def _combine_into(out: torch.Tensor, a, b, c, m: float, device: str, s: fused.Scratch) -> bool:
    if device == "cpu":
        return fused.add_difference(a, b, c, m, out, s)
    import torch

    a32, b32, c32 = (t.to(device, non_blocking=True).float() for t in (a, b, c))
    result = torch.sub(a32, c32.sub_(b32), alpha=m).to(out.dtype)
    out.copy_(result.cpu())
    return bool(torch.isfinite(result).all())


def _apply(entry: Entry, slot: torch.Tensor, a, b, c, m: float, s: fused.Scratch, device: str) -> bool:
    """Fill ``slot`` (the output tensor's place in the file); returns False if it holds NaN/Inf."""
    if entry.rule == "add" and m != 0.0:
        return _combine_into(slot, a, b, c, m, device, s)
    if entry.rule == "channels" and m != 0.0:
        import torch

        k = b.shape[1]
        part = torch.empty(b.shape, dtype=slot.dtype)
        finite = _combine_into(part, a[:, :k].contiguous(), b, c, m, device, s)
        slot.copy_(a)
        slot[:, :k] = part
        return finite
    slot.copy_(a)
    return True


class _Upstream:
    """The writer and tasks of ``plan.upstream``, run in the same pass as ``plan`` (see MergePlan.upstream)."""

    def __init__(self, plan: MergePlan, sync: bool):
        assert plan.upstream is not None and plan.upstream_commit is not None
        self.plan, self.whole_plan, self._commit = plan.upstream, plan, plan.upstream_commit
        self.entries = {e.name: e for e in self.plan.entries}
        if not self.entries.keys() <= {e.name for e in plan.entries}:
            raise MergeError("the upstream merge writes tensors its merge does not read", "inputs")
        _clean_stale_partials(self.plan.out)
        layout = [(e.name, e.dtype, e.shape) for e in self.plan.entries]
        # its recipe names every input's hash (none is computed here): final, so hashed as it is written
        self.writer = SafetensorsWriter(self.plan.out, layout, metadata.build(self.plan, self.plan.out.stem),
                                        sync=sync, create=False, hash_output=True)  # fmt: skip
        self.tasks: dict[str, direct.Task] = {}

    def bind(self) -> None:
        source = self.whole_plan.a
        if not isinstance(source, WrittenSource):
            raise MergeError("a merge with an upstream reads it as its A", "inputs")
        source.bind(self.writer)

    def commit(self) -> None:
        try:
            self.writer.commit()
        except OSError as exc:
            self.writer.abort()
            raise _output_error(self.plan, exc) from None
        self._commit(self.writer.total_size, self.writer.sha256 or "")


def run_merge(
    plan: MergePlan,
    *,
    title: str | None = None,
    progress: Callable[[int], None] | None = None,
    hash_inputs: bool = True,
    sync: bool = True,
    sources: dict | None = None,
) -> MergeResult:
    """Run a plan; ``sources`` (where A, B and C came from) goes into the output's recipe metadata."""
    t0 = time.perf_counter()
    _clean_stale_partials(plan.out)
    title = title or plan.out.stem
    hashes: dict[int, str] = {}
    hash_failed: list[Exception] = []
    # an upstream (a prepared pair's delta) is A's and C's alone: kept whole whatever B turns out to be
    unwritten = "nothing was written" if plan.upstream is None else \
        f"{plan.out.name} was not written (the prepared pair of A and C was, and is kept)"  # fmt: skip

    def hash_all():
        try:
            for i, (role, src) in enumerate(zip("abc", (plan.a, plan.b, plan.c), strict=True), start=1):
                recorded, expected = plan.recorded.get(role), plan.expected.get(role)
                if recorded:
                    hashes[i] = recorded[1]
                    continue
                path = src.files()[0]
                hashes[i] = hashing.file_hashes(path, autov3=False, use_cache=role not in plan.reread).sha256
                if expected and hashes[i].lower() != expected.lower():
                    hash_failed.append(MergeError(f"{path} changed since it was checked: SHA256 {hashes[i][:12]}..., "
                                                  f"expected {expected[:12]}...; {unwritten}", "changed"))
        except CheckpointError as exc:  # it changed while it was read
            hash_failed.append(MergeError(f"{exc}; {unwritten}", "changed"))
        except OSError as exc:  # reported by the merge if it gets that far; a failed merge has its own error
            hash_failed.append(exc)

    hash_inputs = hash_inputs or bool(plan.expected)
    hasher = threading.Thread(target=hash_all, daemon=True, name="merge-hash") if hash_inputs else None
    if hasher:
        hasher.start()
    meta = metadata.build(plan, title, sources)
    # Every input's SHA256 known before the first byte (recorded, or expected and checked before the commit), or
    # none asked for: the header is final from the start, so the output is hashed as it is written, not read
    # again afterwards.
    known = {i: plan.recorded[r][1] if r in plan.recorded else plan.expected.get(r) for i, r in enumerate("abc", 1)}
    header_final = not hash_inputs or all(known.values())
    if hash_inputs and header_final:
        meta = metadata.with_hashes(meta, {i: str(v) for i, v in known.items()})
    position, stop = [0], threading.Event()
    readers = [threading.Thread(target=read_ahead, args=(p, position, stop), daemon=True, name="merge-read-ahead")
               for p in (plan, *([plan.upstream] if plan.upstream else []))]  # fmt: skip
    held = pages.Addresses()
    torch: ModuleType | None = None  # imported below only where some tensor needs it
    # From the writer's first byte on, any exit (an error, Ctrl-C, SIGTERM raised here by the CLI's handler)
    # removes the hidden partial file: the writer is held before its file exists, in the block that aborts it.
    writer = SafetensorsWriter(plan.out, [(e.name, e.dtype, e.shape) for e in plan.entries], meta, sync=sync,
                               create=False, hash_output=header_final)  # fmt: skip
    up = _Upstream(plan, sync) if plan.upstream is not None else None
    writers = [writer, *([up.writer] if up else [])]
    try:
        for w in writers:
            w.create()
        if up is not None:
            up.bind()
        for r in readers:
            r.start()
        for w in writers:
            w.start_populating()
        if plan.device == "auto":
            plan.device = "cpu" if certainly_no_gpu() or not cuda_available() else "cuda"
        fast = fused.kernel() if plan.device == "cpu" else None
        tasks = direct.tasks_for(plan, writer, fast, held) if fast is not None else {}
        if up is not None:
            up.plan.device = plan.device
            up.tasks = direct.tasks_for(up.plan, up.writer, fast, held) if fast is not None else {}
        if len(tasks) < len(plan.entries) or (up is not None and len(up.tasks) < len(up.plan.entries)):
            import torch  # ~2 s, while the inputs are read ahead and the output's pages prepared
    except BaseException as exc:
        stop.set()
        for r in readers:
            if r.ident is not None:
                r.join()
        held.close()
        for w in writers:
            w.abort()
        if isinstance(exc, OSError):
            raise _output_error(plan, exc) from None
        raise
    local = threading.local()

    def run(p: MergePlan, p_tasks: dict[str, direct.Task], w: SafetensorsWriter, entry: Entry) -> bool:
        task = p_tasks.get(entry.name)
        if task is not None:
            try:
                return task()
            except ValueError as exc:  # the C loop refused an access outside a tensor's memory
                raise MergeError(f"{entry.name}: {exc}") from None
        if not hasattr(local, "scratch"):
            local.scratch = fused.Scratch()
        tensors = [src.read(entry.name) for src in p.sources_of(entry)]
        a, b, c = tensors if len(tensors) == 3 else (tensors[0], None, None)  # a copy or a marker: one input
        return _apply(entry, w.slot(entry.name), a, b, c, p.multiplier, local.scratch, p.device)

    def process(entry: Entry) -> bool:
        if up is not None and (first := up.entries.get(entry.name)) is not None:
            run(up.plan, up.tasks, up.writer, first)  # the tensor this one reads (its NaN/Inf are its inputs')
        return run(plan, tasks, writer, entry)

    # Output slots are independent places in the mapped file, so tensors are computed on several threads
    # (the C loop and torch release the GIL) with one torch thread each: cheaper than splitting every op in two.
    workers = 1 if plan.device != "cpu" else max(1, min(4, os.cpu_count() or 1))
    torch_threads = torch.get_num_threads() if torch else 1
    if torch:
        torch.set_num_threads(1 if workers > 1 else torch_threads)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="merge")
    added, channels, copied, nonfinite = 0, [], 0, []
    try:
        futures = [pool.submit(process, e) for e in plan.entries]
        for i, (entry, future) in enumerate(zip(plan.entries, futures, strict=True)):
            position[0] = i
            finite = future.result()
            if up is not None and entry.name in up.entries:
                up.writer.done(entry.name)
            writer.done(entry.name)
            if entry.rule in ("add", "channels") and plan.multiplier != 0.0:
                added += entry.rule == "add"
                if entry.rule == "channels":
                    channels.append(entry.name)
            else:
                copied += 1
            if not finite:
                nonfinite.append(entry.name)
            if progress:
                progress(writer.infos[entry.name].nbytes)
        if hasher:
            hasher.join()
        held.close()  # the outputs' mappings are closed by commit
        if up is not None:
            up.commit()  # whole whatever B turns out to be: it is A's and C's alone
        if hash_failed:
            raise hash_failed[0]
        if hasher and not header_final:
            writer.update_metadata(metadata.with_hashes(meta, hashes))
        try:
            writer.commit(replace=plan.replace)
        except FileExistsError:  # another run's output took the name meanwhile: it stays, this one goes
            writer.abort()
            raise MergeError(f"{plan.out} exists: another run wrote it meanwhile; {unwritten}", "exists") from None
        except OSError as exc:  # the disk filled or failed under the final flush: nothing under OUT's name
            writer.abort()
            raise _output_error(plan, exc) from None
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)  # no worker may touch the map once it is gone
        held.close()
        for w in writers:
            w.abort()
        raise
    finally:
        stop.set()
        for r in readers:
            r.join()  # before the inputs' files are closed
        pool.shutdown(wait=True)
        if torch:
            torch.set_num_threads(torch_threads)
    la = plan.layouts["a"]
    return MergeResult(
        out=plan.out,
        family=la.family or "",
        variant=la.variant,
        tensors=len(plan.entries),
        added=added,
        channel_merged=channels,
        copied=copied,
        only_in_b=plan.only_in_b,
        mismatched=plan.mismatched,
        missing_in_bc=plan.missing_in_bc,
        markers=[e.name for e in plan.entries if e.rule == "marker"],
        nonfinite=nonfinite,
        warnings=plan.warnings,
        bytes_written=writer.total_size,
        seconds=time.perf_counter() - t0,
        device=plan.device,
        dtype=plan.dtype,
        multiplier=plan.multiplier,
        input_sha256={"A": hashes.get(1, ""), "B": hashes.get(2, ""), "C": hashes.get(3, "")},
        sha256=writer.sha256,
    )


def merge(
    inpaint,
    model,
    base,
    out,
    *,
    multiplier: float = 1.0,
    dtype: str = "fp16",
    device: str = "auto",
    force: bool = False,
    title: str | None = None,
    progress=None,
    hash_inputs: bool = True,
    sync: bool = True,
    sources: dict | None = None,
) -> MergeResult:
    """Build an inpainting checkpoint: the Python API behind `inpaint-advisor merge`. ``sync=False`` skips the
    fsync before OUT appears (faster; a power loss right after may leave OUT damaged)."""
    try:
        plan = plan_merge(inpaint, model, base, out, multiplier=multiplier, dtype=dtype, device=device, force=force)
    except CheckpointError as exc:
        raise MergeError(str(exc)) from None
    try:
        return run_merge(plan, title=title, progress=progress, hash_inputs=hash_inputs, sync=sync, sources=sources)
    finally:
        plan.close()
