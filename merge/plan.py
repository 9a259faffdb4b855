"""What a merge will do, decided from the inputs' headers before any tensor is read (and without torch): the
inputs' families and slots, the rule for every output tensor, where the output goes and whether it fits.

Roles: A = the official inpainting model, B = the fine-tune, C = the base B came from.
"""

from __future__ import annotations

import glob
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from data import settings
from data.errors import InpaintAdvisorError
from merge import layout
from merge.checkpoint import TensorSource, open_checkpoint
from merge.header import TensorInfo

OUT_DTYPES = {"fp16": "F16", "bf16": "BF16", "fp32": "F32"}
MARKERS = ("v_pred", "ztsnr")
FREE_MARGIN = 64 * 2**20  # left free beyond the output, for the filesystem's own needs
MAX_MULTIPLIER = 10.0  # M beyond this is a typo, not a merge anyone wants (1.0 is the inpainting recipe)


class MergeError(InpaintAdvisorError):
    """Inputs that cannot be merged as asked; nothing was written. ``reason`` names the kind of problem for
    callers that add advice of their own (a CLI names its flags): "exists", "inputs", "output", "space",
    "changed" (an input is not the file it was checked to be)."""

    code = "merge-refused"

    def __init__(self, message: str, reason: str = "inputs"):
        super().__init__(message)
        self.reason = reason


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
    # roles ("a", "b", "c") whose source stands in for another file (merge.prepared): the (file name, sha256)
    # the output's recipe names for them, instead of the stand-in's own
    recorded: dict[str, tuple[str, str]] = field(default_factory=dict)
    # roles whose file must have this SHA256 (a build's checked inputs): a file that differs fails the merge
    # before the output gets its name. Known up front, they let the output be hashed as it is written.
    expected: dict[str, str] = field(default_factory=dict)
    # roles hashed from their bytes as the merge reads them, not taken from the hash cache (which vouches for a
    # file by its stat, not by what the merge reads)
    reread: set[str] = field(default_factory=set)
    # A merge run in the same pass whose output is this plan's A (a ``WrittenSource``): each of its tensors is
    # written just before this plan's tensor of that name, which reads it from memory (merge.prepared: a
    # build asked to prepare the pair writes the pair's delta and the build together). Committed before this
    # plan's output, then ``upstream_commit(bytes written, SHA256)`` is called.
    upstream: MergePlan | None = None
    upstream_commit: Callable[[int, str], object] | None = None
    replace: bool = False  # the output may take the place of a file there (force): never one written meanwhile
    # more of the output's own metadata (merge.prepared: the pair's record, under the delta's SHA256)
    extra_metadata: dict[str, str] = field(default_factory=dict)

    @property
    def output_bytes(self) -> int:
        return sum(TensorInfo(e.dtype, e.shape).nbytes for e in self.entries)

    def sources_of(self, entry: Entry) -> tuple[TensorSource, ...]:
        """The inputs ``entry`` is read from, in A, B, C order: the merge and its read-ahead both follow this."""
        return {"marker": (self.b,), "copy": (self.a,)}.get(entry.rule, (self.a, self.b, self.c))

    def close(self) -> None:
        for s in (self.a, self.b, self.c):
            s.close()
        if self.upstream is not None:
            self.upstream.close()


ROLE = {"a": "A (the inpainting model)", "b": "B (the fine-tune)", "c": "C (its base)"}


def _check_family(lay: dict[str, layout.Layout]) -> None:
    fams = {k: v.family for k, v in lay.items()}
    for k, v in lay.items():
        if v.family not in layout.MERGEABLE:
            raise MergeError(f"{ROLE[k]} is {v.label}: merges support SD 1.x, SD 2.x and SDXL checkpoints")
    if len(set(fams.values())) > 1:
        odd = next(k for k in "bc" if fams[k] != fams["a"])
        raise MergeError(
            f"{ROLE[odd]} is {lay[odd].label}, but {ROLE['a']} is {lay['a'].label}: A, B and C must be one "
            "family (use the official inpainting model and base of B's family; see `inpaint-advisor lookup`)"
        )


def _check_variants(lay: dict[str, layout.Layout]) -> None:
    a, b, c = lay["a"], lay["b"], lay["c"]
    if a.variant == "normal":
        swapped = next((k for k in "bc" if lay[k].variant in ("inpaint", "pix2pix")), None)
        if swapped:
            raise MergeError(
                f"{ROLE['a']} is a normal {a.label} model but {ROLE[swapped]} is {lay[swapped].label}: the slots "
                f"look swapped. Give the inpainting model as A and the normal one as {swapped.upper()}."
            )
        raise MergeError(
            f"{ROLE['a']} is not an inpainting model ({a.label}, {a.in_channels} UNet input channels): give the "
            "official inpainting checkpoint of the family as A"
        )
    if a.variant not in ("inpaint", "pix2pix"):
        raise MergeError(f"{ROLE['a']} is {a.label}: expected an inpainting (9-channel) or pix2pix UNet")
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


# Filesystems that are views of the kernel, not storage: writing a model there is always a mistake.
_PSEUDO_FS = {"proc", "sysfs", "devtmpfs", "devpts", "cgroup", "cgroup2", "debugfs", "tracefs", "securityfs",
              "configfs", "pstore", "bpf", "fusectl", "mqueue", "hugetlbfs", "efivarfs", "autofs",
              "binfmt_misc"}  # fmt: skip


def _filesystem_type(path: Path) -> str | None:
    """The type of the filesystem ``path`` is on, from /proc/self/mounts (Linux); None elsewhere."""
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return None
    best, kind = "", None
    target = str(path)
    for entry in mounts:
        fields = entry.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind


def _check_output(out: Path, inputs: list[TensorSource], force: bool, needed: int) -> None:
    """Everything about OUT that can be known before the work: a refusal now costs nothing."""
    for src in inputs:
        for f in [src.path, *src.files()]:
            if out.resolve() == f.resolve() or (out.exists() and f.exists() and out.samefile(f)):
                raise MergeError(f"the output {out} is one of the inputs ({f}); choose another name", "output")
    if out.is_dir():
        raise MergeError(f"the output {out} is a folder; give a file name ending in .safetensors", "output")
    if out.exists() and not force:
        raise MergeError(f"{out} exists", "exists")
    if out.suffix.lower() != ".safetensors":
        raise MergeError(f"the output must end in .safetensors (got {out.name})", "output")
    parent = out.resolve().parent
    kind = _filesystem_type(parent)
    if kind in _PSEUDO_FS:
        raise MergeError(f"{parent} is on a {kind} pseudo-filesystem, not storage: choose another folder", "output")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=parent, prefix=".inpaint-advisor-probe-"):
            pass  # what permission bits cannot tell (root, a read-only mount) a write does
    except OSError as exc:
        raise MergeError(f"cannot write in {parent}: {exc.strerror}", "output") from None
    free = shutil.disk_usage(parent).free
    if free < needed + FREE_MARGIN:
        raise MergeError(
            f"not enough free space in {parent}: the output needs {needed / 1e9:.2f} GB and a margin of "
            f"{FREE_MARGIN / 1e6:.0f} MB, {(needed + FREE_MARGIN) / 1e9:.2f} GB in all; {free / 1e9:.2f} GB are free",
            "space",
        )


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
    """Open the inputs (paths, or sources already open: the plan owns them from here) and check everything that
    can be checked before any tensor is read."""
    if not math.isfinite(multiplier) or abs(multiplier) > MAX_MULTIPLIER:
        raise MergeError(f"the multiplier must be a finite number from {-MAX_MULTIPLIER:g} to {MAX_MULTIPLIER:g} "
                         f"(got {multiplier}); 1.0 makes an inpainting version of B", "options")  # fmt: skip
    if dtype not in OUT_DTYPES:
        raise MergeError(f"the output dtype must be one of {', '.join(OUT_DTYPES)} (got {dtype!r})", "options")
    if device not in ("auto", "cpu", "cuda"):
        raise MergeError(f"the device must be auto, cpu or cuda (got {device!r})", "options")
    if device == "cuda" and not cuda_available():
        raise MergeError("the merge was asked to run on CUDA, but torch sees no CUDA device", "options")
    sources: list[TensorSource] = []
    try:
        for p in (inpaint, model, base):
            sources.append(p if isinstance(p, TensorSource) else open_checkpoint(p))
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
        plan.replace = force
        return plan
    except BaseException:
        for s in sources:
            s.close()
        raise


def certainly_no_gpu() -> bool:
    """Whether torch could not see a GPU, told without importing it (Linux: no NVIDIA or AMD device nodes), so
    that a CPU merge need not import torch just to learn that. False means "ask torch"."""
    if settings.current().cuda_hidden:
        return True
    if not sys.platform.startswith("linux"):
        return False
    return not (glob.glob("/dev/nvidia[0-9]*") or os.path.exists("/dev/kfd"))


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
