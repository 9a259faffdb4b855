"""Prepared pairs: a family's official inpainting model A and base C folded, once, into ``D = A - M * C``.

Every build of the family is then ``OUT = D + M * B``: two inputs instead of three, and A (a 4.3 GB fp32
pickle for SD 1.5) is never read again. D keeps A's keys and shapes (the first conv's extra channels are A's own;
tensors a three-input merge copies from A are A's, exactly), in fp32 so that a build from it equals the
three-input merge within one unit in the last place of the output dtype (fp32 sums in another order).

Both steps are the merge engine itself, with a source of zeros standing in for the missing input:
``D = A - M * (C - 0)`` and ``OUT = D - M * (0 - B)``. The zeros are an anonymous read-only mapping: every page
is the kernel's one zero page, so they cost neither memory nor disk reads.

A build asked to prepare the pair (`build --prepare-pair`; not the default: D is twice an fp16 output's bytes)
writes D in the pass that makes its output (``plan_first_build``, ``MergePlan.upstream``): each tensor of D
goes to the cache, and the build's tensor is computed from it at once, in memory, so that A, B and C are read
once and the output is, bit for bit, the one any later build from the pair gives.

A pair lives in the cache (``prepared/<key>/``, keyed by A's and C's sha256 and M): ``delta.safetensors``,
written like any merge output (hidden, then renamed), and ``pair.json``, written after it with the delta's
SHA256; a pair without its record is prepared again. A lock per pair (``prepared/<key>.lock``) makes
concurrent builds prepare it once.

A pair is trusted only as far as it is checked: every use (``using``, which ``plan_build`` enters) compares the
delta's stat (size, mtime, ctime, inode, device) with the one recorded in ``stamp.json`` at its last full check
and computes its SHA256 again whenever they differ; a delta that is not the file it was prepared as is removed,
never merged from (``Gone``), and a build prepares it again. A pair in use is held by its user: filelock has no
shared locks, so each user holds a lock file of its own in ``prepared/<key>.users/``, and `cache clear` leaves
a pair while any of them is held.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import mmap
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from filelock import FileLock, Timeout

from merge import hashing, portable
from merge.checkpoint import TensorSource, WrittenSource, open_checkpoint
from merge.fused import CODES
from merge.header import CheckpointError, TensorInfo, read_header
from merge.plan import MergeError, MergePlan, plan_merge

DELTA_FILE = "delta.safetensors"
PAIR_FILE = "pair.json"
STAMP_FILE = "stamp.json"  # the delta's stat at its last full SHA256 check
USERS = ".users"  # prepared/<key>.users/: a lock file per build that holds the pair
# Of pair.json and the delta's meaning. 2: the delta's SHA256 is recorded. A pair of format 1 is prepared
# again rather than hashed now: its delta was only ever checked by size, so hashing it would bless whatever
# it holds today, the same-size damage included.
FORMAT = 3  # 3: the record's facts are in the delta's own metadata too, under its SHA256
PAIR_METADATA = "inpaint_advisor.pair"


class Unusable(MergeError):
    """This model cannot be built from this pair (the three-input merge can)."""


class Gone(Unusable):
    """The pair cannot serve any build: removed meanwhile (`cache clear`), or its delta is not the file it was
    prepared as (then removed here). The build merges from A, B and C instead (and prepares the pair again if
    asked to)."""


class ZeroSource(TensorSource):
    """Zeros of the given shapes and dtypes (dtypes the C loop knows), all views of one zero mapping."""

    kind = "zeros"

    def __init__(self, tensors: dict[str, TensorInfo], hold: contextlib.ExitStack | None = None):
        """``hold``: what to release with the source (a build's hold on its pair, closed with its plan)."""
        self.path = Path("(zeros)")
        self._hold = hold
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
        if self._hold is not None:
            self._hold.close()


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
    sha256: str = ""  # of the delta file, as written
    format: int = FORMAT
    used: list[str] = field(default_factory=list)

    @property
    def delta(self) -> Path:
        return self.folder / DELTA_FILE

    def facts(self) -> dict:
        """What a build takes from the record: the delta keeps the same in its metadata (``_facts``)."""
        return _facts(self.key, self.a, self.c, self.multiplier, self.family, self.deltas, self.c_dtype,
                      self.missing_in_c, self.mismatched)  # fmt: skip


def _facts(key: str, a: dict, c: dict, multiplier: float, family: str, deltas: dict, c_dtype: str,
           missing_in_c: list, mismatched: list) -> dict:  # fmt: skip
    return {"key": key, "a": {"file": a["file"], "sha256": a["sha256"].upper()},
            "c": {"file": c["file"], "sha256": c["sha256"].upper()}, "multiplier": float(multiplier),
            "family": family, "deltas": {k: list(v) for k, v in deltas.items()}, "c_dtype": c_dtype,
            "missing_in_c": list(missing_in_c), "mismatched": list(mismatched)}  # fmt: skip


def _plan_facts(plan: MergePlan, key: str, inpaint, base, a_sha256: str, c_sha256: str) -> dict:
    return _facts(key, {"file": Path(inpaint).name, "sha256": a_sha256}, {"file": Path(base).name, "sha256": c_sha256},
                  plan.multiplier, plan.layouts["a"].family or "", _deltas(plan), plan.layouts["c"].dtype,
                  plan.missing_in_bc, plan.mismatched)  # fmt: skip


def root() -> Path:
    return hashing.cache_dirs()[0] / "prepared"


def key_of(a_sha256: str, c_sha256: str, multiplier: float) -> str:
    return f"{a_sha256[:16].lower()}-{c_sha256[:16].lower()}-m{float(multiplier)!r}"


def lock_path(key: str) -> Path:
    """The pair's own lock: held while it is prepared, checked, taken up by a user or cleared."""
    return root() / f"{key}.lock"


def users_dir(key: str) -> Path:
    return root() / f"{key}{USERS}"


def _load(folder: Path) -> PreparedPair | None:
    """The pair in ``folder`` when its record is whole, of this format, and its delta file the size it says
    (what it holds is ``check``'s question, asked before use)."""
    try:
        data = json.loads((folder / PAIR_FILE).read_text())
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            return None
        pair = PreparedPair(**{**data, "folder": folder})
        if not _is_sha256(pair.sha256) or pair.delta.stat().st_size != pair.size:
            return None
        # the record names the folder it is in: one copied under another key (another M) is no pair of it
        if pair.key != folder.name or key_of(pair.a["sha256"], pair.c["sha256"], pair.multiplier) != folder.name:
            return None
        return pair
    except (OSError, ValueError, TypeError, UnicodeDecodeError, RecursionError):
        return None


def _is_sha256(value) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(ch in "0123456789ABCDEF" for ch in value)


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest().upper()


def _write_json(target: Path, record: dict) -> None:
    """``record`` under ``target``'s name only once whole (a hidden ``.<name>.partial-<pid>`` first)."""
    staged = target.with_name(f".{target.name}.partial-{os.getpid()}")
    staged.write_text(json.dumps(record))
    os.replace(staged, target)


def _stamp(folder: Path, sha256: str, st: os.stat_result) -> None:
    _write_json(folder / STAMP_FILE, {"sha256": sha256, "stat": hashing.stat_stamp(st)})


def _stamped(folder: Path):
    try:
        return json.loads((folder / STAMP_FILE).read_text())
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return None


def check(pair: PreparedPair) -> str | None:
    """Why ``pair``'s delta is not the file it was prepared as (None when it is). Cheap while the delta's stat is
    the one stamped at its last full check; otherwise its SHA256 is computed again, and a match stamps the
    stat it was computed under. Call it holding ``lock_path(pair.key)`` (``using`` does)."""
    try:
        st = pair.delta.stat()
        if st.st_size != pair.size:
            return f"{DELTA_FILE} is {st.st_size} bytes, not {pair.size}"
        if _stamped(pair.folder) != {"sha256": pair.sha256, "stat": hashing.stat_stamp(st)}:
            digest = _sha256(pair.delta)
            if digest != pair.sha256:
                return (f"the SHA256 of its {DELTA_FILE} is {digest[:16]}..., not the {pair.sha256[:16]}... it was "
                        "prepared with")  # fmt: skip
            if hashing.stat_stamp(pair.delta.stat()) == hashing.stat_stamp(st):  # unchanged while it was read
                _stamp(pair.folder, digest, st)
        # the record a build goes by says what the delta (its bytes checked above) says of itself
        if _delta_facts(pair.delta) != pair.facts():
            return f"its {PAIR_FILE} does not say what its {DELTA_FILE} was prepared as"
        return None
    except CheckpointError:
        return f"the header of its {DELTA_FILE} cannot be read"
    except OSError as exc:
        return f"{DELTA_FILE} cannot be read: {exc.strerror or exc}"


def _delta_facts(delta: Path) -> dict | None:
    try:
        return json.loads(read_header(delta).metadata.get(PAIR_METADATA) or "null")
    except (ValueError, RecursionError):
        return None


def _in_place_of_a_folder(path: Path) -> bool:
    """Something other than a folder of its own (a file, a link) where the cache keeps a folder."""
    return path.is_symlink() or (path.exists() and not path.is_dir())


def holders(key: str, *, clean: bool = True) -> tuple[list[Path], list[Path]]:
    """The lock files of the users that hold pair ``key`` now, and the stale ones of users that died (their lock
    went with their process, a zombie's too), removed unless ``clean`` is False. Call it holding
    ``lock_path(key)``, as ``using`` and `cache clear` do, so that no user comes meanwhile."""
    live: list[Path] = []
    stale: list[Path] = []
    folder = users_dir(key)
    if _in_place_of_a_folder(folder):
        stale.append(folder)  # no users' folder but something in its place: it would stop every build's hold
        if clean:
            folder.unlink(missing_ok=True)
        return live, stale
    for path in sorted(folder.glob("*.lock")) if folder.is_dir() else []:
        try:
            with FileLock(path, timeout=0):
                pass
        except Timeout:
            live.append(path)
            continue
        stale.append(path)
        if clean:
            path.unlink(missing_ok=True)
    if clean and folder.is_dir() and not live:
        with contextlib.suppress(OSError):
            folder.rmdir()
    return live, stale


@contextlib.contextmanager
def using(pair: PreparedPair) -> Iterator[PreparedPair]:
    """Hold ``pair`` while a merge reads it: checked first (``check``), then held until the block ends, so that
    `cache clear` keeps it (and says it is busy). Yields the pair as recorded now; raises Gone where it was
    removed meanwhile, or fails its check (then it is removed here: never merged from)."""
    with _locked(lock_path(pair.key)):
        current = _load(pair.folder)
        if current is None:
            raise Gone(f"the prepared pair {pair.key} was removed meanwhile", "inputs")
        why = check(current)
        if why is not None:
            shutil.rmtree(current.folder, ignore_errors=True)
            raise Gone(f"the prepared pair {pair.key} failed its check ({why}): removed", "inputs")
        holders(pair.key)  # stale users' files go
        hold = FileLock(users_dir(pair.key) / f"{os.getpid()}-{secrets.token_hex(6)}.lock")
        hold.acquire()
    try:
        yield current
    finally:
        hold.release()
        Path(hold.lock_file).unlink(missing_ok=True)


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
    return [d for d in sorted(folder.iterdir()) if d.is_dir() and not d.name.endswith(USERS) and _load(d) is None]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path):
        yield


def prepare(inpaint, base, a_sha256: str, c_sha256: str, *, multiplier: float = 1.0,
            progress: Callable[[int], None] | None = None) -> PreparedPair:  # fmt: skip
    """The prepared pair of A and C (``inpaint``, ``base``: paths), made now unless the cache has it."""
    from merge.engine import run_merge

    key = key_of(a_sha256, c_sha256, multiplier)
    with _locked(lock_path(key)):
        done = _load(root() / key)
        if done is not None:
            return done
        plan = _plan_delta(inpaint, base, key, multiplier, a_sha256, c_sha256)
        try:
            result = run_merge(plan, progress=progress, hash_inputs=False)
            return _record(plan, key, inpaint, base, a_sha256, c_sha256, result.bytes_written, result.sha256 or "")
        finally:
            plan.close()


def _plan_delta(inpaint, base, key: str, multiplier: float, a_sha256: str, c_sha256: str) -> MergePlan:
    """The merge that writes pair ``key``'s delta, ``D = A - M * (C - 0)``, into its folder (made empty of any
    earlier record). Call it holding ``lock_path(key)``."""
    folder = root() / key
    if _in_place_of_a_folder(folder):
        folder.unlink()  # something else under the pair's name: the pair is made in a folder of its own
    folder.mkdir(parents=True, exist_ok=True)
    for name in (PAIR_FILE, STAMP_FILE, DELTA_FILE):
        if (folder / name).is_dir() and not (folder / name).is_symlink():
            shutil.rmtree(folder / name)  # a folder in a file's place would fail every preparation
        else:
            (folder / name).unlink(missing_ok=True)
    c = open_checkpoint(base)
    zeros = ZeroSource(c.tensors)
    plan = plan_merge(inpaint, zeros, c, folder / DELTA_FILE, multiplier=multiplier, dtype="fp32", force=True)
    plan.extra_metadata = {PAIR_METADATA: json.dumps(_plan_facts(plan, key, inpaint, base, a_sha256, c_sha256))}
    return plan


def _deltas(plan: MergePlan) -> dict[str, list[int]]:
    return {e.name: list(plan.c.tensors[e.name].shape) for e in plan.entries if e.rule in ("add", "channels")}


def _record(plan: MergePlan, key: str, inpaint, base, a_sha256: str, c_sha256: str, size: int,
            sha256: str) -> PreparedPair:  # fmt: skip
    """Record the pair whose delta ``plan`` has just written (``sha256``: hashed as it was written, or "" where
    it could not be, then read again here and stamped only if the file did not change meanwhile). The record
    appears only once the delta it describes is whole."""
    from merge.engine import ENGINE_VERSION

    folder = root() / key
    pair = PreparedPair(
        key=key, folder=folder, a={"file": Path(inpaint).name, "sha256": a_sha256.upper()},
        c={"file": Path(base).name, "sha256": c_sha256.upper()}, multiplier=float(plan.multiplier),
        family=plan.layouts["a"].family or "", deltas=_deltas(plan), c_dtype=plan.layouts["c"].dtype,
        missing_in_c=plan.missing_in_bc, mismatched=plan.mismatched, size=size,
        created=datetime.now(UTC).isoformat(timespec="seconds"), engine=ENGINE_VERSION,
    )  # fmt: skip
    st = pair.delta.stat()
    pair.sha256 = sha256 or _sha256(pair.delta)
    if sha256 or hashing.stat_stamp(pair.delta.stat()) == hashing.stat_stamp(st):
        _stamp(folder, pair.sha256, st)
    _write_json(folder / PAIR_FILE, {k: v for k, v in asdict(pair).items() if k != "folder"})
    return pair


def plan_first_build(inpaint, base, model, out, a_sha256: str, c_sha256: str, *, multiplier: float = 1.0,
                     dtype: str = "fp16", device: str = "auto", force: bool = False) -> MergePlan | None:  # fmt: skip
    """A build that prepares the family's pair in the same pass (``build --prepare-pair``): each tensor of the
    delta D is written to the cache, and the build's tensor is computed from it, still in memory
    (``MergePlan.upstream``). A, B and C are read once, and the output is bit for bit the one a build from the
    finished pair gives.

    None where the pair was prepared meanwhile (``find`` has it); raises Unusable where B cannot be built
    from it (``unusable_with``). The plan holds the pair's lock until it is closed: a concurrent build of the
    family waits, then builds from the pair."""
    key = key_of(a_sha256, c_sha256, multiplier)
    hold = contextlib.ExitStack()
    hold.enter_context(_locked(lock_path(key)))
    delta: MergePlan | None = None
    try:
        if _load(root() / key) is not None:
            hold.close()
            return None
        delta = _plan_delta(inpaint, base, key, multiplier, a_sha256, c_sha256)
        b = model if isinstance(model, TensorSource) else open_checkpoint(model)
        deltas = _deltas(delta)
        why = _unusable(deltas, b)
        if why is not None:
            b.close()
            raise Unusable(f"this model cannot be built from the prepared pair: {why}", "inputs")
        written = WrittenSource(delta.out, [(e.name, e.dtype, e.shape) for e in delta.entries])
        plan = _plan_from_delta(written, b, deltas, multiplier, out, hold, dtype=dtype, device=device, force=force)
    except BaseException:
        if delta is not None:
            delta.close()
        hold.close()
        raise
    plan.missing_in_bc, plan.mismatched = list(delta.missing_in_bc), list(delta.mismatched)
    plan.recorded = {"a": (Path(inpaint).name, a_sha256.upper()), "c": (Path(base).name, c_sha256.upper())}
    _with_c_dtype(plan, delta.layouts["c"].dtype)
    plan.upstream = delta
    plan.upstream_commit = lambda size, sha256: _record(delta, key, inpaint, base, a_sha256, c_sha256, size, sha256)
    return plan


def unusable_with(pair: PreparedPair, model: TensorSource) -> str | None:
    """Why a build of ``model`` (B) cannot come from this pair (None when it can): every tensor the pair holds
    as a delta must be in B with C's shape, or the three-input merge would have copied A's instead."""
    return _unusable(pair.deltas, model)


def _unusable(deltas: dict[str, list[int]], model: TensorSource) -> str | None:
    for name, shape in deltas.items():
        info = model.tensors.get(name)
        if info is None:
            return f"B has no {name}"
        if not info.is_float or list(info.shape) != shape:
            return f"B's {name} is {info.dtype} {list(info.shape)}, the base's {shape}"
    return None


def plan_build(pair: PreparedPair, model, out, *, dtype: str = "fp16", device: str = "auto",
               force: bool = False) -> MergePlan:  # fmt: skip
    """The plan of ``OUT = D + M * B``: the three-input merge's plan in all a caller sees (rules, reports and
    the recipe name A, B and C); raises Unusable where ``unusable_with`` says why, and Gone where the pair was
    removed meanwhile or fails its check. The plan holds the pair (``using``) until it is closed, so that the
    merge that reads it is never left without it."""
    b = model if isinstance(model, TensorSource) else open_checkpoint(model)
    why = unusable_with(pair, b)
    if why is not None:
        b.close()
        raise Unusable(f"this model cannot be built from the prepared pair: {why}", "inputs")
    hold = contextlib.ExitStack()
    try:
        pair = hold.enter_context(using(pair))
    except BaseException:
        b.close()
        raise
    plan = _plan_from_delta(pair.delta, b, pair.deltas, pair.multiplier, out, hold, dtype=dtype, device=device,
                            force=force)  # fmt: skip
    plan.missing_in_bc, plan.mismatched = list(pair.missing_in_c), list(pair.mismatched)
    plan.recorded = {"a": (pair.a["file"], pair.a["sha256"]), "c": (pair.c["file"], pair.c["sha256"])}
    _with_c_dtype(plan, pair.c_dtype)
    return plan


def _plan_from_delta(delta, b: TensorSource, deltas: dict[str, list[int]], multiplier: float, out,
                     hold: contextlib.ExitStack, **options) -> MergePlan:  # fmt: skip
    """``OUT = D - M * (0 - B)``: the plan owns ``b`` and ``hold`` (released with its zeros when it is closed,
    or here on failure)."""
    try:
        zeros = ZeroSource({k: TensorInfo(b.tensors[k].dtype, tuple(s)) for k, s in deltas.items()}, hold)
    except BaseException:
        b.close()
        hold.close()
        raise
    return plan_merge(delta, b, zeros, out, multiplier=multiplier, **options)  # closes its sources on failure


def _with_c_dtype(plan: MergePlan, c_dtype: str) -> None:
    """The plan as the three-input merge's in all a caller sees: C is the base (its dtype), not the zeros."""
    plan.layouts["c"] = dataclasses.replace(plan.layouts["c"], dtype=c_dtype)
    if plan.layouts["b"].dtype != c_dtype:
        plan.warnings.append(f"B is {plan.layouts['b'].dtype} and C is {c_dtype}: the delta carries rounding noise")
