"""``out = A + (B - C) * M``, streamed tensor by tensor (domain.md section 5).

A = the official inpainting model, B = the fine-tune, C = the base B came from. Output keys are A's. Floating
tensors present in all three with equal shapes get the delta; the UNet's first conv (A has 9 or 8 input
channels, B and C 4) gets it on channels 0-3 only; integer tensors and keys only in A are copied; keys only in
B are reported; B's ``v_pred``/``ztsnr`` markers are carried over.

Arithmetic is fp32 whatever the inputs, as ``A - M * (C - B)``: the same value as ``A + (B - C) * M``, but when
B == C the subtracted term is +0.0, which leaves every A value (-0.0 included) bit for bit unchanged.

Planning (headers, families, slots, free space) never imports torch, so a bad input is refused at once. On
the CPU, with the C loop built (merge._fused), every tensor that is a plain range of a safetensors file is
merged by merge.direct without torch at all; torch (~2 s to import) is imported only for what remains (a
pickle's tensors, a transposed diffusers tensor, the GPU). Meanwhile threads read the inputs ahead
(_read_ahead) and prepare the output's pages (SafetensorsWriter.start_populating), both through merge.pages.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from merge import direct, fused, hashing, layout, pages
from merge.checkpoint import TensorSource, open_checkpoint
from merge.header import CheckpointError, TensorInfo
from merge.safetensors_io import SafetensorsWriter

if TYPE_CHECKING:
    import torch

OUT_DTYPES = {"fp16": "F16", "bf16": "BF16", "fp32": "F32"}
SUPPORTED = {"sd1", "sd2", "sdxl"}
MARKERS = ("v_pred", "ztsnr")
IMPLEMENTATION = {"sd1": "https://github.com/CompVis/stable-diffusion",
                  "sd2": "https://github.com/Stability-AI/stablediffusion",
                  "sdxl": "https://github.com/Stability-AI/generative-models"}  # fmt: skip


class MergeError(Exception):
    """Inputs that cannot be merged as asked; nothing was written."""


@dataclass
class Entry:
    name: str
    dtype: str  # output safetensors dtype
    shape: tuple[int, ...]
    rule: str  # "add" | "channels" | "copy" | "marker"


@dataclass
class MergePlan:
    a: TensorSource
    b: TensorSource
    c: TensorSource
    layouts: dict[str, layout.Layout]
    out: Path
    multiplier: float
    dtype: str
    device: str  # "cpu", "cuda", or "auto" until run_merge settles it
    entries: list[Entry]
    only_in_b: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    missing_in_bc: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def output_bytes(self) -> int:
        return sum(TensorInfo(e.dtype, e.shape).nbytes for e in self.entries)

    def sources_of(self, entry: Entry) -> tuple[TensorSource, ...]:
        """The inputs ``entry`` is read from, in A, B, C order: the merge and its read-ahead both follow this."""
        return {"marker": (self.b,), "copy": (self.a,)}.get(entry.rule, (self.a, self.b, self.c))

    def close(self) -> None:
        for s in (self.a, self.b, self.c):
            s.close()


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


ROLE = {"a": "A (--inpaint)", "b": "B (--model)", "c": "C (--base)"}


def _check_family(lay: dict[str, layout.Layout]) -> None:
    fams = {k: v.family for k, v in lay.items()}
    for k, v in lay.items():
        if v.family not in SUPPORTED:
            raise MergeError(f"{ROLE[k]} is {v.label}: merges support SD 1.x, SD 2.x and SDXL checkpoints")
    if len(set(fams.values())) > 1:
        odd = next(k for k in "bc" if fams[k] != fams["a"])
        raise MergeError(
            f"{ROLE[odd]} is {lay[odd].label}, but A (--inpaint) is {lay['a'].label}: A, B and C must be one "
            "family (use the official inpainting model and base of B's family; see `inpaint-advisor lookup`)"
        )


def _check_variants(lay: dict[str, layout.Layout]) -> None:
    a, b, c = lay["a"], lay["b"], lay["c"]
    if a.variant == "normal":
        swapped = next((k for k in "bc" if lay[k].variant in ("inpaint", "pix2pix")), None)
        if swapped:
            raise MergeError(
                f"A (--inpaint) is a normal {a.label} model but {ROLE[swapped]} is {lay[swapped].label}: the slots "
                f"look swapped. Pass the inpainting model as --inpaint and the normal one as "
                f"{'--model' if swapped == 'b' else '--base'}."
            )
        raise MergeError(
            f"A (--inpaint) is not an inpainting model ({a.label}, {a.in_channels} UNet input channels): pass the "
            "official inpainting checkpoint of the family as --inpaint"
        )
    if a.variant not in ("inpaint", "pix2pix"):
        raise MergeError(f"A (--inpaint) is {a.label}: expected an inpainting (9-channel) or pix2pix UNet")
    for k, lo in (("b", b), ("c", c)):
        if lo.variant != "normal" and lo.in_channels is not None:
            raise MergeError(
                f"{ROLE[k]} is {lo.label} ({lo.in_channels} UNet input channels); it must be a normal model"
                + (
                    ": B already is an inpainting model, nothing to build"
                    if k == "b" and lo.variant == "inpaint"
                    else ""
                )
            )


def _check_output(out: Path, inputs: list[TensorSource], force: bool, needed: int) -> None:
    for src in inputs:
        for f in [src.path, *src.files()]:
            if out.resolve() == f.resolve() or (out.exists() and f.exists() and out.samefile(f)):
                raise MergeError(f"OUT {out} is one of the inputs ({f}); choose another name")
    if out.exists() and not force:
        raise MergeError(f"{out} exists; pass --force to replace it")
    if out.suffix.lower() != ".safetensors":
        raise MergeError(f"OUT must end in .safetensors (got {out.name})")
    out.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(out.parent).free
    if free < needed + 64 * 2**20:
        raise MergeError(
            f"not enough free space in {out.parent}: the output needs {needed / 1e9:.2f} GB, "
            f"{free / 1e9:.2f} GB are free"
        )


def _clean_stale_partials(out: Path) -> None:
    """Remove ``.<OUT>.partial-<pid>`` files left by merges that were killed."""
    for p in out.parent.glob(f".{out.name}.partial-*"):
        try:
            os.kill(int(p.name.rsplit("-", 1)[1]), 0)
        except (ValueError, ProcessLookupError):
            p.unlink(missing_ok=True)
        except PermissionError:
            pass


def plan_merge(
    inpaint,
    model,
    base,
    out,
    *,
    multiplier: float = 1.0,
    dtype: str = "fp16",
    device: str = "auto",
    force: bool = False,
) -> MergePlan:
    """Open the inputs and check everything that can be checked before any tensor is read."""
    if dtype not in OUT_DTYPES:
        raise MergeError(f"--dtype must be one of {', '.join(OUT_DTYPES)}")
    if device not in ("auto", "cpu", "cuda"):
        raise MergeError("--device must be auto, cpu or cuda")
    if device == "cuda" and not _cuda_available():
        raise MergeError("--device cuda was asked for, but torch sees no CUDA device")
    sources: list[TensorSource] = []
    try:
        for p in (inpaint, model, base):
            sources.append(open_checkpoint(p))
        a, b, c = sources
        lay = {"a": layout.detect(a.tensors), "b": layout.detect(b.tensors), "c": layout.detect(c.tensors)}
        _check_family(lay)
        _check_variants(lay)
        out_dtype = OUT_DTYPES[dtype]
        entries, mismatched, missing = [], [], []
        order = sorted(a.tensors, key=lambda k: (a.tensors[k].start, k))
        for name in order:
            ia = a.tensors[name]
            ib, ic = b.tensors.get(name), c.tensors.get(name)
            target = out_dtype if ia.is_float else ia.dtype
            rule = "copy"
            if ia.is_float and ib is not None and ic is not None and ib.is_float and ic.is_float:
                if ia.shape == ib.shape == ic.shape:
                    rule = "add"
                elif (
                    ib.shape == ic.shape
                    and len(ia.shape) == len(ib.shape) >= 2
                    and ia.shape[0] == ib.shape[0]
                    and ia.shape[2:] == ib.shape[2:]
                    and ia.shape[1] > ib.shape[1]
                ):
                    rule = "channels"
                else:
                    mismatched.append(name)
            elif ia.is_float and (ib is None or ic is None):
                missing.append(name)
            entries.append(Entry(name, target, ia.shape, rule))
        markers = [m for m in MARKERS if m in b.tensors and m not in a.tensors]
        for m in markers:
            entries.append(Entry(m, b.tensors[m].dtype, b.tensors[m].shape, "marker"))
        only_b = sorted(k for k in b.tensors if k not in a.tensors and k not in MARKERS)
        plan = MergePlan(a, b, c, lay, Path(out), multiplier, dtype, device, entries, only_b, mismatched, missing)
        pred = lambda lo: "v" if "v_pred" in lo.prediction else "epsilon"  # noqa: E731
        if pred(lay["a"]) != pred(lay["b"]):
            plan.warnings.append(
                f"A predicts {pred(lay['a'])} but B predicts {pred(lay['b'])}: the output keeps B's markers "
                f"({', '.join(lay['b'].prediction) or 'none'}), and may need testing in your UI"
            )
        if lay["b"].dtype != lay["c"].dtype:
            plan.warnings.append(f"B is {lay['b'].dtype} and C is {lay['c'].dtype}: the delta carries rounding noise")
        _check_output(plan.out, sources, force, plan.output_bytes + 2 * 2**20)
        return plan
    except BaseException:
        for s in sources:
            s.close()
        raise


def _certainly_no_gpu() -> bool:
    """Whether torch could not see a GPU, told without importing it (Linux: no NVIDIA or AMD device nodes), so
    that a CPU merge need not import torch just to learn that. False means "ask torch"."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return True
    if not sys.platform.startswith("linux"):
        return False
    return not (glob.glob("/dev/nvidia[0-9]*") or os.path.exists("/dev/kfd"))


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


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


# -- the run ----------------------------------------------------------------------------------------------------
# Input bytes mapped in beyond the tensor being written: enough to keep a disk busy through torch's import,
# little enough that the pages are still cached when the merge gets there.
def _read_ahead_bytes() -> int:
    try:
        ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows), where read-ahead is off anyway
        return 1 << 30
    return min(4 << 30, max(256 << 20, ram // 8))


READ_AHEAD = _read_ahead_bytes()


def _read_ahead(plan: MergePlan, position: list[int], stop: threading.Event) -> None:
    """Map the inputs in (reading them from disk when cold) ahead of the merge, in the order it consumes them,
    up to READ_AHEAD bytes beyond the tensor being written (merge.pages). The thread starts before torch is
    imported, so a cold disk is busy from the first second, and a warm merge finds its pages mapped.
    Contiguous ranges are joined, so that few calls cover a lot while the import holds the GIL."""
    if not pages.available():
        return
    ranges = [[r for src in plan.sources_of(e) for r in src.byte_ranges(e.name)] for e in plan.entries]
    upto = [0]
    for rs in ranges:
        upto.append(upto[-1] + sum(end - start for _, start, end in rs))
    held = pages.Addresses()  # each mapping's address, held until every call has returned
    pending: dict[int, list[int]] = {}  # mapping's address -> [start, end] not yet populated

    def flush() -> bool:
        ok = all(pages.populate(base, start, end) for base, (start, end) in pending.items())
        pending.clear()
        return ok

    try:
        for i, rs in enumerate(ranges):
            while not stop.is_set() and upto[i] - upto[position[0]] > READ_AHEAD:
                if not flush():
                    return  # the kernel refuses (a filesystem without it): the merge faults pages in itself
                stop.wait(0.005)
            if stop.is_set():
                return
            for mapping, start, end in rs:
                base = held.of(mapping)
                run = pending.get(base)
                if run and run[1] == start and end - run[0] <= pages.STEP:
                    run[1] = end
                    continue
                if run and not pages.populate(base, *run):
                    return
                pending[base] = [start, end]
        flush()
    finally:
        held.close()


def _placeholder(i: int) -> str:
    return f"{i:064d}"


def _metadata(plan: MergePlan, title: str) -> dict[str, str]:
    la, lb = plan.layouts["a"], plan.layouts["b"]
    names = [Path(s.path).name for s in (plan.a, plan.b, plan.c)]
    family = la.family
    arch = la.architecture or f"{family}-{la.variant}"
    recipe = {
        "type": "inpaint-advisor", "primary_model_hash": _placeholder(1), "secondary_model_hash": _placeholder(2),
        "tertiary_model_hash": _placeholder(3), "interp_method": "Add difference", "multiplier": plan.multiplier,
        "save_as_half": plan.dtype == "fp16", "custom_name": title, "config_source": 0, "bake_in_vae": None,
        "discard_weights": "", "is_inpainting": la.variant == "inpaint", "is_instruct_pix2pix": la.variant == "pix2pix",
    }  # fmt: skip
    models = {_placeholder(i + 1): {"name": n, "legacy_hash": None, "sd_merge_recipe": None} for i, n in
              enumerate(names)}  # fmt: skip
    own = {
        "tool": "inpaint-advisor", "formula": "A + (B - C) * M", "M": plan.multiplier, "dtype": plan.dtype,
        "inputs": {role: {"file": n, "sha256": _placeholder(i + 1), "family": plan.layouts[k].family,
                          "variant": plan.layouts[k].variant}
                   for i, (role, k, n) in enumerate(zip("ABC", "abc", names, strict=True))},
        "first_conv": "delta on B's input channels, A's extra channels kept",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }  # fmt: skip
    return {
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": arch,
        "modelspec.implementation": IMPLEMENTATION.get(family, ""),
        "modelspec.title": title,
        "modelspec.resolution": layout.RESOLUTION.get(family, ""),
        "modelspec.merged_from": ", ".join(names),
        "modelspec.prediction_type": "v" if "v_pred" in lb.prediction else "epsilon",
        "modelspec.date": datetime.now(UTC).date().isoformat(),
        "sd_merge_recipe": json.dumps(recipe),
        "sd_merge_models": json.dumps(models),
        "inpaint_advisor.recipe": json.dumps(own),
        "format": "pt",
    }


def run_merge(
    plan: MergePlan,
    *,
    title: str | None = None,
    progress: Callable[[int], None] | None = None,
    hash_inputs: bool = True,
    sync: bool = True,
) -> MergeResult:
    t0 = time.perf_counter()
    _clean_stale_partials(plan.out)
    title = title or plan.out.stem
    hashes: dict[int, str] = {}

    def hash_all():
        for i, src in enumerate((plan.a, plan.b, plan.c), start=1):
            hashes[i] = hashing.file_hashes(src.files()[0]).sha256

    hasher = threading.Thread(target=hash_all, daemon=True, name="merge-hash") if hash_inputs else None
    if hasher:
        hasher.start()
    metadata = _metadata(plan, title)
    try:
        writer = SafetensorsWriter(plan.out, [(e.name, e.dtype, e.shape) for e in plan.entries], metadata, sync=sync)
    except OSError as exc:
        if exc.errno == 28:
            raise MergeError(f"no space left for {plan.out} ({plan.output_bytes / 1e9:.2f} GB)") from None
        raise
    position, stop = [0], threading.Event()
    reader = threading.Thread(target=_read_ahead, args=(plan, position, stop), daemon=True, name="merge-read-ahead")
    reader.start()
    writer.start_populating()
    held = pages.Addresses()
    torch = None
    try:
        if plan.device == "auto":
            plan.device = "cpu" if _certainly_no_gpu() or not _cuda_available() else "cuda"
        fast = fused.kernel() if plan.device == "cpu" else None
        tasks = direct.tasks_for(plan, writer, fast, held) if fast is not None else {}
        if len(tasks) < len(plan.entries):
            import torch  # ~2 s, while the inputs are read ahead and the output's pages prepared
    except BaseException:
        stop.set()
        reader.join()
        held.close()
        writer.abort()
        raise
    local = threading.local()

    def process(entry: Entry) -> bool:
        task = tasks.get(entry.name)
        if task is not None:
            return task()
        if not hasattr(local, "scratch"):
            local.scratch = fused.Scratch()
        tensors = [src.read(entry.name) for src in plan.sources_of(entry)]
        a, b, c = tensors if len(tensors) == 3 else (tensors[0], None, None)  # a copy or a marker: one input
        return _apply(entry, writer.slot(entry.name), a, b, c, plan.multiplier, local.scratch, plan.device)

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
            final = {}
            for k, v in metadata.items():
                for n, sha in hashes.items():
                    v = v.replace(_placeholder(n), sha)
                final[k] = v
            writer.update_metadata(final)
        held.close()  # the output's mapping is closed by commit
        writer.commit()
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)  # no worker may touch the map once it is gone
        held.close()
        writer.abort()
        raise
    finally:
        stop.set()
        reader.join()  # before the inputs' files are closed
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
) -> MergeResult:
    """Build an inpainting checkpoint: the Python API behind `inpaint-advisor merge`. ``sync=False`` skips the
    fsync before OUT appears (faster; a power loss right after may leave OUT damaged)."""
    try:
        plan = plan_merge(inpaint, model, base, out, multiplier=multiplier, dtype=dtype, device=device, force=force)
    except CheckpointError as exc:
        raise MergeError(str(exc)) from None
    try:
        return run_merge(plan, title=title, progress=progress, hash_inputs=hash_inputs, sync=sync)
    finally:
        plan.close()
