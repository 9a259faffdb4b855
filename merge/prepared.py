"""Prepared pairs: a family's official inpainting model A and base C folded, once, into ``D = A - M * C``.

Every build of the family is then ``OUT = D + M * B``: two inputs instead of three, and A (a 4.3 GB fp32
pickle for SD 1.5) is never read again. D keeps A's keys and shapes (the first conv's extra channels are A's own;
tensors a three-input merge copies from A are A's, exactly), in fp32 so that a build from it equals the
three-input merge within one unit in the last place of the output dtype (fp32 sums in another order).

Both steps are the merge engine itself, with a source of zeros standing in for the missing input:
``D = A - M * (C - 0)`` and ``OUT = D - M * (0 - B)``. The zeros are an anonymous read-only mapping: every page
is the kernel's one zero page, so they cost neither memory nor disk reads.

A pair lives in the cache (``prepared/<key>/``, keyed by A's and C's sha256 and M): ``delta.safetensors``,
written like any merge output (hidden, then renamed), and ``pair.json``, written after it; a pair without its
record is prepared again. A lock per pair makes concurrent builds prepare it once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import mmap
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from filelock import FileLock

from merge import hashing, portable
from merge.checkpoint import TensorSource, open_checkpoint
from merge.fused import CODES
from merge.header import TensorInfo
from merge.plan import MergeError, MergePlan, plan_merge

DELTA_FILE = "delta.safetensors"
PAIR_FILE = "pair.json"
FORMAT = 1  # of pair.json and the delta's meaning


class Unusable(MergeError):
    """This model cannot be built from this pair (the three-input merge can)."""


class ZeroSource(TensorSource):
    """Zeros of the given shapes and dtypes (dtypes the C loop knows), all views of one zero mapping."""

    kind = "zeros"

    def __init__(self, tensors: dict[str, TensorInfo]):
        self.path = Path("(zeros)")
        self.tensors = {k: TensorInfo(i.dtype if i.dtype in CODES else "F32", i.shape) for k, i in tensors.items()}
        self.metadata = {}
        size = max([i.nbytes for i in self.tensors.values()] + [mmap.PAGESIZE])
        self._mm = portable.zero_mapping(size)

    def read(self, name, buffer=None):
        from merge.safetensors_io import typed_view

        return typed_view(self._mm, self.tensors[name], 0)

    def segments(self, name):
        n = self.tensors[name].nbytes
        return [(self._mm, 0, n)] if n else []

    def byte_ranges(self, name):
        return []  # nothing to read ahead: the zero page is always there

    def files(self) -> list[Path]:
        return []

    def close(self) -> None:
        with contextlib.suppress(BufferError):
            self._mm.close()


@dataclass
class PreparedPair:
    key: str
    folder: Path
    a: dict  # {"file": name, "sha256": ...}
    c: dict
    multiplier: float
    family: str
    deltas: dict[str, list[int]]  # D's tensors that hold A - M*C, with the shape B must have (C's)
    c_dtype: str
    missing_in_c: list[str]
    mismatched: list[str]
    size: int
    created: str
    engine: str
    format: int = FORMAT
    used: list[str] = field(default_factory=list)

    @property
    def delta(self) -> Path:
        return self.folder / DELTA_FILE


def root() -> Path:
    return hashing.cache_dirs()[0] / "prepared"


def key_of(a_sha256: str, c_sha256: str, multiplier: float) -> str:
    return f"{a_sha256[:16].lower()}-{c_sha256[:16].lower()}-m{float(multiplier)!r}"


def _load(folder: Path) -> PreparedPair | None:
    """The pair in ``folder`` when its record is whole and its delta file is the one it describes."""
    try:
        data = json.loads((folder / PAIR_FILE).read_text())
        pair = PreparedPair(**{**data, "folder": folder})
        if pair.format != FORMAT or pair.delta.stat().st_size != pair.size:
            return None
        return pair
    except (OSError, ValueError, TypeError, UnicodeDecodeError, RecursionError):
        return None


def find(a_sha256: str, c_sha256: str, multiplier: float) -> PreparedPair | None:
    return _load(root() / key_of(a_sha256, c_sha256, multiplier))


def pairs() -> list[PreparedPair]:
    """Every prepared pair in the cache, newest first."""
    folder = root()
    found = [p for d in sorted(folder.iterdir()) if d.is_dir() and (p := _load(d))] if folder.is_dir() else []
    return sorted(found, key=lambda p: p.created, reverse=True)


def leftovers() -> list[Path]:
    """Folders of pairs whose preparation did not finish (killed, disk full): space to reclaim."""
    folder = root()
    if not folder.is_dir():
        return []
    return [d for d in sorted(folder.iterdir()) if d.is_dir() and _load(d) is None]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path):
        yield


def prepare(inpaint, base, a_sha256: str, c_sha256: str, *, multiplier: float = 1.0,
            progress: Callable[[int], None] | None = None) -> PreparedPair:  # fmt: skip
    """The prepared pair of A and C (``inpaint``, ``base``: paths), made now unless the cache has it."""
    from merge.engine import ENGINE_VERSION, run_merge

    key = key_of(a_sha256, c_sha256, multiplier)
    folder = root() / key
    with _locked(root() / f"{key}.lock"):
        done = _load(folder)
        if done is not None:
            return done
        folder.mkdir(parents=True, exist_ok=True)
        (folder / PAIR_FILE).unlink(missing_ok=True)
        c = open_checkpoint(base)
        zeros = ZeroSource(c.tensors)
        plan = plan_merge(inpaint, zeros, c, folder / DELTA_FILE, multiplier=multiplier, dtype="fp32", force=True)
        try:
            deltas = {e.name: list(c.tensors[e.name].shape) for e in plan.entries if e.rule in ("add", "channels")}
            result = run_merge(plan, progress=progress, hash_inputs=False)
            pair = PreparedPair(
                key=key, folder=folder, a={"file": Path(inpaint).name, "sha256": a_sha256.upper()},
                c={"file": Path(base).name, "sha256": c_sha256.upper()}, multiplier=float(multiplier),
                family=result.family, deltas=deltas, c_dtype=plan.layouts["c"].dtype,
                missing_in_c=plan.missing_in_bc, mismatched=plan.mismatched, size=result.bytes_written,
                created=datetime.now(UTC).isoformat(timespec="seconds"), engine=ENGINE_VERSION,
            )  # fmt: skip
        finally:
            plan.close()
        record = {k: v for k, v in asdict(pair).items() if k != "folder"}
        staged = folder / f".{PAIR_FILE}.{os.getpid()}"
        staged.write_text(json.dumps(record))
        os.replace(staged, folder / PAIR_FILE)  # the record appears only once the delta it describes is whole
        return pair


def unusable_with(pair: PreparedPair, model: TensorSource) -> str | None:
    """Why a build of ``model`` (B) cannot come from this pair (None when it can): every tensor the pair holds
    as a delta must be in B with C's shape, or the three-input merge would have copied A's instead."""
    for name, shape in pair.deltas.items():
        info = model.tensors.get(name)
        if info is None:
            return f"B has no {name}"
        if not info.is_float or list(info.shape) != shape:
            return f"B's {name} is {info.dtype} {list(info.shape)}, the base's {shape}"
    return None


def plan_build(pair: PreparedPair, model, out, *, dtype: str = "fp16", device: str = "auto",
               force: bool = False) -> MergePlan:  # fmt: skip
    """The plan of ``OUT = D + M * B``: the three-input merge's plan in all a caller sees (rules, reports and
    the recipe name A, B and C); raises Unusable where ``unusable_with`` says why."""
    b = model if isinstance(model, TensorSource) else open_checkpoint(model)
    why = unusable_with(pair, b)
    if why is not None:
        b.close()
        raise Unusable(f"this model cannot be built from the prepared pair: {why}", "inputs")
    zeros = ZeroSource({k: TensorInfo(b.tensors[k].dtype, tuple(s)) for k, s in pair.deltas.items()})
    plan = plan_merge(pair.delta, b, zeros, out, multiplier=pair.multiplier, dtype=dtype, device=device, force=force)
    plan.missing_in_bc, plan.mismatched = list(pair.missing_in_c), list(pair.mismatched)
    plan.recorded = {"a": (pair.a["file"], pair.a["sha256"]), "c": (pair.c["file"], pair.c["sha256"])}
    plan.layouts["c"] = dataclasses.replace(plan.layouts["c"], dtype=pair.c_dtype)
    if plan.layouts["b"].dtype != pair.c_dtype:
        plan.warnings.append(f"B is {plan.layouts['b'].dtype} and C is {pair.c_dtype}: the delta carries rounding "
                             "noise")  # fmt: skip
    return plan
