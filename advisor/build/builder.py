"""`build`: from anything `lookup` accepts to a verified inpainting checkpoint on disk.

It follows the lookup's ladder: a model that already is an inpainting model, or its own (or sibling) release
made for the version asked about, is downloaded rather than built; otherwise A (the family's official
inpainting model) and C (its base) come from the bundled data's live mirror, or the user's own files, B from
the registry or the user's file, and the merge engine builds ``<B's stem>-inpainting.safetensors``. Every
download goes through ``advisor.build.download`` (resumable, verified); inputs are kept in the cache, outputs in the
chosen folder; what was built is recorded in the registry (``artifact``) so that `lookup` points at it and the
same recipe is not built twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import FileLock

from advisor.advice import Command, LookupResult, Match, ladder
from advisor.advice.lookup import lookup
from advisor.build.cache import download_folder
from advisor.build.download import Downloaded, DownloadError, Source, fetch
from advisor.local.cached_files import files_dir, hub_file_path
from advisor.safety import safe_filename
from crawler import families, registry, sources
from data import settings
from data.errors import InpaintAdvisorError
from merge import hashing, portable

if TYPE_CHECKING:
    from crawler.registry import ModelRecord, Reader, Registry, VersionRecord
    from crawler.sources import Download
    from merge.prepared import PreparedPair

ACTIONS = ("built", "downloaded-release", "already-built", "already-inpainting", "planned")
_FOLDER_PARTS = ("unet", "vae", "text_encoder", "text_encoder_2")
_WEIGHTS = ("diffusion_pytorch_model{}.safetensors", "model{}.safetensors")


class BuildError(InpaintAdvisorError):
    """A build that cannot be done as asked; ``code`` names the kind (data/error_codes.json)."""

    code = "build-failed"


@dataclass
class BuildInput:
    role: str  # A | B | C
    path: str
    sha256: str | None
    source: str  # "local", a URL (never with a token), or "hf:repo" for a folder
    verified: bool


@dataclass
class FetchRecord:
    url: str
    path: str
    bytes: int
    resumed: bool
    verified: bool
    reused: bool


@dataclass
class PlanItem:
    role: str  # A | B | C | release | pair (asked to prepare it: its disk is about twice an fp16 B's)
    what: str
    source: str
    size: int | None
    state: str  # local | cached | partial | missing
    sha256: str | None = None  # what it must hash to, where a registry, the Hub or the bundled data says


@dataclass
class Output:
    path: str
    size: int
    sha256: str


@dataclass
class PairUse:
    """The prepared pair a build read instead of A and C."""

    key: str
    path: str
    prepared_now: bool  # made by this build (asked to prepare it), in the pass that made its output


@dataclass
class BuildResult:
    query: str
    action: str  # one of ACTIONS
    reason: str
    match: Match | None
    output: Output | None = None
    inputs: dict[str, BuildInput] = field(default_factory=dict)
    downloads: list[FetchRecord] = field(default_factory=list)
    plan: list[PlanItem] = field(default_factory=list)
    merge: Command | None = None  # what the merge runs, as the CLI's command would say it
    recipe_key: str | None = None  # A, B, C, M and dtype: a build of the same key is the same file
    disk_needed: int = 0
    # of that, what A and C need fetched, by what each is (its SHA256, or where it comes from): the same for every build
    # of a family, so a batch counts each once (``batch.disk_for``)
    shared_disk: dict[str, int] = field(default_factory=dict)
    pair: PairUse | None = None
    verified: bool = False
    nonfinite: int = 0  # output tensors holding NaN/Inf (kept only with allow_nonfinite, or inherited from inputs)
    warnings: list[str] = field(default_factory=list)


@dataclass
class _Need:
    """One file the build needs: where it is now, or how to fetch it."""

    role: str
    source: Source | None  # None: a local file, nothing to fetch
    folder: Path  # where a download goes
    local: Path | None = None
    identity: str = ""  # what the recipe key says about it: a sha256, or an id
    files: list[_Need] = field(default_factory=list)  # the parts of a diffusers folder
    origin: str = "fetch"  # user (the user's own path) | hf-cache | fetch
    checked: bool = False  # its bytes are known to be the ones a registry or the bundled data records
    git_oid: str | None = None  # a small file's git blob id (the Hub's checksum of files not in LFS)


Progress = Callable[[str, int, int | None], None]  # (label, bytes done, total)


def _hf_endpoint() -> str:
    from crawler.hf.hub import endpoint_from_env

    return endpoint_from_env()


def _hf_token() -> str | None:
    return settings.current().hf_token


def _hf_cache_dir() -> str | None:
    """The Hugging Face cache as the environment says now (huggingface_hub reads it once, at import)."""
    return settings.current().hf_cache


def _from_hf_cache(repo: str, path: str, sha256: str | None) -> Path | None:
    """A file the user's Hugging Face cache already holds (huggingface_hub's own lookup), if it is the one."""
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(repo, path, cache_dir=_hf_cache_dir())
    except Exception:  # noqa: BLE001 - a cache we cannot read is a cache we do not use
        return None
    if not isinstance(hit, str):
        return None
    if sha256 and hashing.file_hashes(hit, autov3=False).sha256.upper() != sha256.upper():
        return None
    return Path(hit)


def _hub_file(role: str, repo: str, path: str, sha256: str | None, size: int | None,
              git_oid: str | None = None) -> _Need:  # fmt: skip
    cached_at = hub_file_path(repo, path)
    url = settings.Sites(hf_endpoint=_hf_endpoint()).hub_file(repo, path)  # the endpoint with its credentials
    identity = (sha256 or f"hf:{repo}/{path}").upper()
    cached = _from_hf_cache(repo, path, sha256)
    if cached is not None:
        return _Need(role, None, cached.parent, local=cached, identity=identity, origin="hf-cache",
                     checked=bool(sha256))  # fmt: skip
    source = Source(url, name=cached_at.name, sha256=sha256, size=size, token=_hf_token(), label=role,
                    weights=not path.endswith(".json"))  # fmt: skip
    return _Need(role, source, cached_at.parent, identity=identity if sha256 or not git_oid else f"GIT:{git_oid}",
                 git_oid=None if sha256 else git_oid)  # fmt: skip


_LISTING = ".inpaint-advisor-listing.json"  # a diffusers folder's Hub listing, kept for offline builds


def _hub_listing(role: str, repo: str, root: Path, offline: bool) -> tuple[dict, dict, dict, set[str]]:
    """(sizes, lfs sha256, git blob ids, file names) of a Hub repo: asked of the Hub and kept beside the cached
    folder; offline, the kept copy (never the network)."""
    kept = root / _LISTING
    if offline:
        try:
            data = json.loads(kept.read_text())
            return data["sizes"], data["hashes"], data["oids"], set(data["names"])
        except (OSError, ValueError, KeyError, TypeError):
            raise BuildError(f"{role}: {repo}'s file listing is not in the cache, and the build is offline",
                             "offline") from None  # fmt: skip
    from crawler.hf.hub import Hub
    from crawler.hf.inspect import blobs_of, git_oids

    try:
        with Hub(_hf_endpoint(), _hf_token()) as hub:
            info = hub.model_info(repo, files_metadata=True)
    except Exception as exc:
        raise BuildError(f"{role}: cannot list {repo} on the Hugging Face Hub ({exc})", "network") from None
    sizes, hashes = blobs_of(info)
    names = set(sizes) | {s.rfilename for s in info.siblings or []}
    oids = git_oids(info)
    with contextlib.suppress(OSError):  # a cache that cannot be written: the next offline build says so
        root.mkdir(parents=True, exist_ok=True)
        kept.write_text(json.dumps({"sizes": sizes, "hashes": hashes, "oids": oids, "names": sorted(names)}))
    return sizes, hashes, oids, names


def _hub_folder(role: str, repo: str, checked: tuple[str, str] | None = None, offline: bool = False) -> _Need:
    """A diffusers folder: its listing from the Hub (sizes and lfs.sha256 verify each file), the weights of
    each component (fp16 variants first, as the merge reads them)."""
    root = files_dir() / "hf" / safe_filename(repo.replace("/", "--"), "repo")
    sizes, hashes, oids, names = _hub_listing(role, repo, root, offline)
    wanted = [n for n in ("model_index.json",) if n in names]
    for part in _FOLDER_PARTS:
        if f"{part}/config.json" in names:
            wanted.append(f"{part}/config.json")
        weights = next((f"{part}/{w.format(v)}" for v in (".fp16", "") for w in _WEIGHTS
                        if f"{part}/{w.format(v)}" in names), None)  # fmt: skip
        if weights:
            wanted.append(weights)
    if not any(w.startswith("unet/") and w.endswith(".safetensors") for w in wanted):
        raise BuildError(f"{role}: {repo} has no unet/ safetensors weights to build from", "not-a-model")
    expected = dict(hashes)
    if checked:  # the bundled data's own record of the folder's main file wins over the listing
        expected[checked[0]] = checked[1].upper()
    parts = [_hub_file(role, repo, n, expected.get(n), sizes.get(n), oids.get(n)) for n in wanted]
    identity = hashlib.sha256("\n".join(f"{n}:{p.identity}" for n, p in zip(wanted, parts, strict=True))
                              .encode()).hexdigest().upper()  # fmt: skip
    return _Need(role, None, root, identity=identity, files=parts, origin="folder")


def _official(role: str, fam: dict, which: str, checks: dict, offline: bool) -> _Need:
    spec = fam[which]
    repo, _ = ladder.live_mirror(spec, checks)
    if spec.get("layout") == "diffusers":
        return _hub_folder(role, repo, (spec["file"], spec["sha256"]) if spec.get("file") else None, offline)
    return _hub_file(role, repo, spec["file"], spec.get("sha256"), spec.get("size"))


def _given_or_official(role: str, given: str | os.PathLike | None, fam: dict | None, which: str, checks: dict,
                       offline: bool) -> _Need:  # fmt: skip
    """The user's own file when given, else the family's official one."""
    if given:
        return _local(role, given)
    assert fam is not None  # _build refuses to go on without a family's official files for what is not given
    return _official(role, fam, which, checks, offline)


def _local(role: str, path: str | os.PathLike) -> _Need:
    p = Path(path).expanduser()
    if not p.exists():
        raise BuildError(f"{role}: no such file or folder: {p}", "bad-input")
    identity = hashing.file_hashes(p, autov3=False).sha256 if p.is_file() else hashing.folder_identity(p)
    return _Need(role, None, p.parent, local=p, identity=identity, origin="user", checked=True)


def registry_download(role: str, reader: Reader | None, model_id: str,
                      version_id: str | None) -> tuple[ModelRecord, VersionRecord, Download]:  # fmt: skip
    """A registry version's primary file as its source downloads it (the version asked, else the one a user
    means); BuildError (no-registry, no-file) where the registry cannot say."""
    if reader is None or (model := reader.model(model_id)) is None:  # say, an official model known from data/ alone
        raise BuildError(f"{role}: {model_id} is not in the registry, so its file cannot be found", "no-registry")
    versions = reader.versions(model.id)
    version = next((v for v in versions if v.id == version_id), None) or ladder.choose_version(versions, None)
    if version is None or not version.primary_file:
        raise BuildError(f"{role}: the registry knows no file of {model.name} to download", "no-file")
    return model, version, sources.get(model.source).download(model, version)


def _registry_file(role: str, reader: Reader | None, model_id: str, version_id: str | None,
                   folder: Path | None = None, offline: bool = False) -> _Need:  # fmt: skip
    """B (or a release) from the registry: a Civitai version's primary file, a Hub file or diffusers folder."""
    model, version, file = registry_download(role, reader, model_id, version_id)
    if file.folder:
        assert file.repo is not None  # only a Hub repo is a folder of files
        return _hub_folder(role, file.repo, offline=offline)
    if file.repo is not None and file.path is not None:  # the user's Hugging Face cache may hold it
        need = _hub_file(role, file.repo, file.path, file.sha256, file.size)
    else:
        source = Source(file.url, name=file.name, sha256=file.sha256, size=file.size, token=file.token, label=role)
        need = _Need(role, source, download_folder(file), identity=(file.sha256 or version.id).upper())
    if folder is not None:
        need.folder = folder
    return need


def _path_of(need: _Need) -> str:
    """Where the merge reads this input: the user's file, the cached download, or the folder of a diffusers repo
    (each where it is, or where its download goes)."""
    if need.local is not None:
        return str(need.local)
    if not need.files and need.source is not None and need.source.name:
        return str(need.folder / safe_filename(need.source.name))
    return str(need.folder)


def _state(need: _Need) -> str:
    if need.files:
        states = {_state(p) for p in need.files}
        return "cached" if states == {"cached"} else "partial" if states & {"cached", "partial"} else "missing"
    if need.local is not None:
        return "local" if need.origin == "user" else "cached"
    assert need.source is not None  # a need is a folder's files, a file on disk, or a file to fetch
    target = need.folder / safe_filename(need.source.name) if need.source.name else None
    if target is not None and target.exists():
        return "cached"
    if need.folder.exists() and any(need.folder.glob(".inpaint-advisor-*.partial")):
        return "partial"
    return "missing"


def _plan_item(n: _Need) -> PlanItem:
    """A merge input as a line of the plan: what it is, where from, its size and cache state."""
    return PlanItem(n.role, _describe(n), n.source.url if n.source else str(n.local or n.folder),
                    n.source.size if n.source else None, _state(n), _sha256(n))  # fmt: skip


def _size(need: _Need) -> int:
    """The file's bytes: on disk where it is, else as its source says (0 where neither knows)."""
    if need.files:
        return sum(_size(p) for p in need.files)
    if need.local is not None and need.local.is_file():
        return need.local.stat().st_size
    return (need.source.size or 0) if need.source is not None else 0


def _bytes(need: _Need) -> int:
    if need.files:
        return sum(_bytes(p) for p in need.files)
    return (need.source.size or 0) if need.source is not None and _state(need) != "cached" else 0


# Downloads that failed in the batch of builds running now (``one_batch``), by URL: the family's A and C are not
# fetched again, to fail again, for each of its models (a Hub that cannot be reached costs minutes of retries).
_failed_in_batch: ContextVar[dict[str, BuildError] | None] = ContextVar("failed_in_batch", default=None)


def failed_earlier(why: str) -> str:
    """What a batch says of a file that failed for one of its earlier models, which it does not fetch again."""
    return f"{why} (not tried again: it failed for an earlier model of this batch)"


@contextlib.contextmanager
def one_batch() -> Iterator[None]:
    """Builds run one after another as one batch: a download that failed is not tried again by the next."""
    token = _failed_in_batch.set({})
    try:
        yield
    finally:
        _failed_in_batch.reset(token)


def _get(need: _Need, progress: Progress | None, records: list[FetchRecord], offline: bool,
         warnings: list[str] | None = None) -> Path:  # fmt: skip
    """The need's path on disk, downloading what is missing."""
    if need.files:
        for part in need.files:
            _get(part, progress, records, offline, warnings)
        return need.folder
    if need.source is None:
        assert need.local is not None  # a need is a folder's files, a file on disk, or a file to fetch
        return need.local
    if offline:
        there = need.folder / safe_filename(need.source.name) if need.source.name else None
        if there is not None and there.exists():
            return there
        raise BuildError(f"{need.role}: {need.source.name or need.source.url} is not in the cache, and the build is "
                         "offline", "offline")  # fmt: skip
    label = f"{need.role}: {need.source.name or ''}".strip()
    failed = _failed_in_batch.get()
    if failed is not None and need.source.url in failed:
        earlier = failed[need.source.url]
        raise BuildError(failed_earlier(str(earlier)), earlier.code)
    try:
        got: Downloaded = fetch(need.source, need.folder,
                                progress=(lambda done, total: progress(label, done, total)) if progress else None)
    except DownloadError as exc:
        error = BuildError(str(exc), exc.code)
        if failed is not None and exc.code != "exists":  # a name taken in one folder says nothing of the next
            failed[need.source.url] = error
        raise error from None
    verified = got.verified or (need.git_oid is not None and _check_git_oid(need, got.path))
    records.append(FetchRecord(got.url, str(got.path), got.bytes, got.resumed, verified, got.reused))
    if warnings is not None:
        warnings.extend(got.warnings)  # the file is good; its bookkeeping could not be written (a full disk)
    need.checked = verified
    return got.path


def _check_git_oid(need: _Need, path: Path) -> bool:
    """A config file against its git blob id; one that differs is removed (it is not what the Hub lists)."""
    data = path.read_bytes()
    if hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest() == need.git_oid:
        return True
    path.unlink(missing_ok=True)
    raise BuildError(f"{need.role}: {path.name} is not the file the Hub lists (git blob id {need.git_oid}): removed",
                     "hash-mismatch")  # fmt: skip


def _recipe_key(a: _Need, b: _Need, c: _Need, multiplier: float, dtype: str) -> str:
    from merge.engine import ENGINE_VERSION

    text = "|".join([a.identity, b.identity, c.identity, repr(float(multiplier)), dtype, ENGINE_VERSION])
    return hashlib.sha256(text.encode()).hexdigest()


def _is_local_file(query: str) -> bool:
    from advisor.advice import QueryError, parse_query

    try:
        return parse_query(query).kind == "file"
    except QueryError:
        return False


def _stem(b_path: Path) -> str:
    name = b_path.name
    return name if b_path.is_dir() else name.rsplit(".", 1)[0]


@dataclass
class BuildPlan:
    """What a build will do, settled before a byte is fetched or written: ``result`` is what `--dry-run` and
    `--json` print (action "planned", the inputs with their sources, sizes and cache states, the disk needed),
    or the final answer when nothing is left to do (``settled``); the rest is what ``run_build`` needs."""

    result: BuildResult
    match: Match
    out_dir: Path
    offline: bool
    db: str | None = None
    settled: bool = False
    fetch: _Need | None = None  # a download instead of a merge: the model itself, or its release
    fetch_action: str = ""  # what the result's action becomes once fetched
    record_fetch: bool = False  # a fetched release goes into the registry
    copy_from: Path | None = None  # built before, elsewhere: copied into out_dir
    merge: _MergeInputs | None = None


@dataclass
class _MergeInputs:
    a: _Need
    b: _Need
    c: _Need
    pair: PreparedPair | None  # read instead of A and C when the family's pair is prepared
    key: str  # the recipe key: A, B, C, M and dtype
    target: Path
    recorder: Registry | None  # the registry to record into (None: not recorded)
    multiplier: float
    dtype: str
    device: str
    allow_nonfinite: bool
    prepare_pair: bool = False  # fold A and C into the family's pair in this build's pass (when it has none)

    @property
    def needs(self) -> tuple[_Need, ...]:
        return (self.b,) if self.pair is not None else (self.a, self.b, self.c)  # a pair stands for A and C


def build(query: str, *, out: str | os.PathLike = ".", inpaint: str | None = None, base: str | None = None,
          multiplier: float = 1.0, dtype: str = "fp16", device: str = "auto", force_build: bool = False,
          dry_run: bool = False, offline: bool = False, db: str | None = None, progress: Progress | None = None,
          merge_progress: Callable[[int], None] | None = None, allow_nonfinite: bool = False,
          prepare_pair: bool = False) -> BuildResult:  # fmt: skip
    """The Python API behind `inpaint-advisor build`: ``plan_build``, then (unless ``dry_run``) ``run_build``.
    Raises BuildError (and lookup's errors) when it cannot."""
    plan = plan_build(query, out=out, inpaint=inpaint, base=base, multiplier=multiplier, dtype=dtype, device=device,
                      force_build=force_build, offline=offline, db=db, allow_nonfinite=allow_nonfinite,
                      prepare_pair=prepare_pair)  # fmt: skip
    if dry_run or plan.settled:
        return plan.result
    return run_build(plan, progress=progress, merge_progress=merge_progress)


def plan_build(query: str, *, out: str | os.PathLike = ".", inpaint: str | None = None, base: str | None = None,
               multiplier: float = 1.0, dtype: str = "fp16", device: str = "auto", force_build: bool = False,
               offline: bool = False, db: str | None = None, allow_nonfinite: bool = False,
               prepare_pair: bool = False) -> BuildPlan:  # fmt: skip
    """What building ``query`` takes: the model it means, and a download of its release or the merge's A, B and C
    with where each comes from. Touches no file but the registry (a model found live is stored there).

    ``prepare_pair``: where the family has no prepared pair yet, this build writes one (``merge.prepared``) in
    the pass that makes its output, for later builds to read instead of A and C. Off by default: a build then
    writes its output only (the pair's fp32 delta is twice an fp16 output's bytes); a pair made before is used
    either way."""
    # A writing command: with no registry yet it makes one, so that a model found live is stored and its file
    # can be fetched (the two Quickstart commands lead to a first build with no crawl).
    with contextlib.suppress(registry.RegistryError):  # a registry that cannot be made: lookup says why
        registry.open(db)
    found = lookup(query, db=db, offline=offline)
    match, rec = found.match, found.recommendation
    if match is None:
        if len(found.candidates) == 1:
            why = f"did you mean {found.candidates[0].name} ({found.candidates[0].model_id})? name it by id"
        else:
            why = "several models match: name one by id" if found.candidates else "; ".join(found.notes) or "no match"
        raise BuildError(f"nothing to build for “{query}”: {why}", "not-found")
    assert rec is not None  # lookup answers every match with a recommendation
    is_base = match.source == "family" or (match.source in sources.NAMES and not match.is_inpainting
                                           and sources.get(match.source).is_official(match.model_id or ""))
    if is_base and not _is_local_file(query):
        raise BuildError(f"“{query}” is {match.name}, a base model, not a fine-tune: there is nothing to build; "
                         f"`inpaint-advisor lookup` names its official inpainting model", "is-a-base")  # fmt: skip
    plan = BuildPlan(BuildResult(query, "planned", "", match, warnings=list(found.warnings)), match,
                     Path(out).expanduser(), offline, db)  # fmt: skip
    if plan.out_dir.exists() and not plan.out_dir.is_dir():
        raise BuildError(f"{plan.out_dir}: not a folder; a build's output goes into a folder", "bad-input")
    reader = registry.open_reader_if_any(db)
    try:
        if force_build or not _plan_fetch(plan, found, rec, reader):
            _plan_merge(plan, found, rec, reader, inpaint, base, multiplier, dtype, device, db, allow_nonfinite)
    finally:
        if reader is not None:
            reader.close()
    if prepare_pair:
        _plan_pair(plan)
    return plan


def _plan_pair(plan: BuildPlan) -> None:
    """A build asked to prepare the family's pair: the pair as a line of the plan, with its disk, or why this
    build makes none."""
    from merge import prepared

    m, result = plan.merge, plan.result
    if m is None or plan.settled or plan.copy_from is not None:
        result.warnings.append("no prepared pair is made: this build merges nothing")
        return
    if len(m.a.identity) != 64 or len(m.c.identity) != 64:
        result.warnings.append("no prepared pair is made: a pair is keyed by A's and C's SHA256, and one is unknown")
        return
    m.prepare_pair = True  # also where the family has one: made again if it turns out gone or damaged
    if m.pair is not None:
        return  # read, not made
    size = 2 * _size(m.b)  # D is fp32: twice an fp16 B's bytes
    result.plan.append(PlanItem("pair", "the family's prepared pair, D = A - M*C in fp32, for later builds",
                                str(prepared.root()), size or None, "to prepare"))  # fmt: skip
    result.disk_needed += size


def run_build(plan: BuildPlan, *, progress: Progress | None = None,
              merge_progress: Callable[[int], None] | None = None) -> BuildResult:  # fmt: skip
    """Do what ``plan`` says: fetch, or merge into a verified, recorded checkpoint. A plan is run once."""
    result = plan.result
    if plan.settled:
        return result
    if plan.fetch is not None:
        _check_space(plan.out_dir, result.disk_needed)
        path = _get(plan.fetch, progress, result.downloads, plan.offline, result.warnings)
        result.action = plan.fetch_action
        result.output = _output(path)
        result.verified = _verified(plan.fetch)
        if not result.verified:
            result.warnings.append(f"{path.name}: the registry records no SHA256 for it: unverified")
        if plan.record_fetch:
            _record(plan.match, path, result.output.sha256, db=plan.db)
        return result
    m = plan.merge
    assert m is not None  # a plan that is not settled fetches or merges
    if plan.copy_from is not None:
        assert result.output is not None
        result.output = _copy_into(plan.copy_from, m.target, result.output.sha256)  # --out is where it goes
        result.reason += f" (copied into {plan.out_dir})"
        return result
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    # One build at a time per output path, across processes (and hosts sharing the folder): the check that
    # the name is free, the merge, the rename and the record happen under it.
    with FileLock(plan.out_dir / f".{m.target.name}.lock"):
        if m.target.exists():
            adopted = _adopt(m.target, m.key, m.recorder, plan.match, m.multiplier, m.dtype)
            result.action, result.output, result.verified = "already-built", adopted, True
            result.reason = f"Built before from the same A, B, C, M and dtype (unrecorded until now): {m.target}"
            return result
        _run_merge(m, plan.match, progress, merge_progress, plan.offline, result)
    return result


def _plan_fetch(plan: BuildPlan, found: LookupResult, rec: ladder.Recommendation, reader) -> bool:
    """Download instead of build: the model itself when it already is an inpainting model, or its own or
    sibling release made for this version (``rec``: ``found``'s). True when the plan is that download."""
    match, result = plan.match, plan.result
    if rec.kind == "already-inpainting":
        if match.source == "file":
            result.action, result.reason = "already-inpainting", rec.reason
            result.output = _output(Path(found.query.strip()).expanduser())  # as lookup's query parser read it
            result.verified = plan.settled = True
            return True
        if match.model_id is None:  # not a registry model (lookup gives one an id): no file to download
            raise BuildError(f"{match.name} is not in a registry, so its file cannot be found", "no-registry")
        need = _registry_file("release", reader, match.model_id, match.version_id, plan.out_dir, plan.offline)
        plan.fetch_action = "already-inpainting"
    elif rec.kind in ("own-release", "sibling-release") and rec.for_your_version and rec.target is not None \
            and rec.target.version_id:
        release = reader.model_of_version(rec.target.version_id)
        need = _registry_file("release", reader, release.id, rec.target.version_id, plan.out_dir, plan.offline)
        plan.fetch_action = "downloaded-release"
    else:
        return False
    plan.fetch, plan.record_fetch = need, reader is not None and bool(match.model_id)
    result.reason = rec.reason + " Downloaded rather than built (force a build to make one anyway)."
    result.plan = [PlanItem("release", need.source.name or need.source.url if need.source else str(need.folder),
                            need.source.url if need.source else "", need.source.size if need.source else None,
                            _state(need), _sha256(need))]  # fmt: skip
    result.disk_needed = _bytes(need)
    return True


def _output(path: Path) -> Output:
    if path.is_dir():
        return Output(str(path.resolve()), sum(f.stat().st_size for f in path.rglob("*") if f.is_file()), "")
    return Output(str(path.resolve()), path.stat().st_size, hashing.file_hashes(path, autov3=False).sha256)


def _check_space(folder: Path, needed: int) -> None:
    free = shutil.disk_usage(_existing(folder)).free
    if needed > free:
        raise BuildError(f"not enough free space in {folder}: {needed / 1e9:.2f} GB needed, {free / 1e9:.2f} GB free",
                         "disk")  # fmt: skip


def _record(match: Match, path: Path, sha256: str, *, db) -> None:
    """A downloaded release, recorded like a build (so that status lists it)."""
    made = registry.Made(key=f"release:{match.version_id}:{sha256}", kind="downloaded-release", path=path,
                         sha256=sha256, model_id=match.model_id, version_id=match.version_id)  # fmt: skip
    with contextlib.suppress(registry.RegistryError):  # a registry that cannot be written: the file is there
        registry.open(db).record_artifact(made)


def _plan_merge(plan: BuildPlan, found: LookupResult, rec: ladder.Recommendation, reader, inpaint, base,
                multiplier: float, dtype: str, device: str, db, allow_nonfinite: bool) -> None:  # fmt: skip
    """The merge's A, B and C, the recipe key and the output (``rec``: ``found``'s); settled when the same recipe
    was built before."""
    match, result, offline = plan.match, plan.result, plan.offline
    build_rec = next((r for r in [rec, *found.alternatives] if r.kind == "build"), None)
    fam = families.official_target(match.family)
    if not (inpaint and base) and (build_rec is None or fam is None):
        raise BuildError(f"no build route for {match.name}: {rec.reason}", "no-build-route")
    checks = reader.official_checks() if reader is not None else {}
    a = _given_or_official("A", inpaint, fam, "inpaint", checks, offline)
    c = _given_or_official("C", base, fam, "base", checks, offline)
    if match.source == "file" or _is_local_file(found.query):  # found by its hash: still the user's own file
        b = _local("B", found.query)
    elif reader is None or match.model_id is None:  # (no id: a bare family, nothing to look up)
        raise BuildError(f"B: {match.name} is not in a registry, so its file cannot be found", "no-registry")
    else:
        b = _registry_file("B", reader, match.model_id, match.version_id, offline=offline)
    key = _recipe_key(a, b, c, multiplier, dtype)
    if inpaint or base:  # the advice speaks of the official pair; this build takes the user's file(s)
        a_is, c_is = (f"{_describe(n)} ({'yours' if given else 'official'})" for n, given in ((a, inpaint), (c, base)))
        result.reason = (f"Make an inpainting version of {match.name}: A = {a_is}, B = your model, C = {c_is}, "
                         f"M = {float(multiplier)!r}.")  # fmt: skip
        if inpaint:  # the family's caveats are about its official inpainting model (and pair): not this build's A
            caveats = set((families.family(match.family) or {}).get("caveats", []))
            result.warnings = [w for w in result.warnings if w not in caveats]
    else:
        assert build_rec is not None  # (checked above)
        result.reason = build_rec.reason.replace("M = 1.0", f"M = {float(multiplier)!r}")  # the advice's: the default
    if rec.route is not None:  # built as asked; the advice says where a route does better
        result.warnings.append(f"{rec.reason.split(':', 1)[0]} ranks above a merge for this model ({rec.kind}); "
                               "building as asked.")  # fmt: skip
    result.plan = [_plan_item(n) for n in (a, b, c)]
    result.recipe_key = key
    recorder = None
    try:
        recorder = registry.open(db) if reader is not None else None
    except registry.RegistryError as exc:
        result.warnings.append(f"the build will not be recorded: {exc}")
    target = plan.out_dir / _output_name(b, match)
    if recorder is not None:
        done = recorder.artifact_by_key(key)
        if done is not None:
            result.action = "already-built"
            result.reason = f"Built before from the same A, B, C, M and dtype: {done.path}"
            result.output = Output(done.path, done.size, done.sha256)
            result.verified = plan.settled = True
            if Path(done.path).resolve().parent != plan.out_dir.resolve():
                plan.copy_from, plan.settled = Path(done.path), False
            plan.merge = _MergeInputs(a, b, c, None, key, target, recorder, multiplier, dtype, device, allow_nonfinite)
            return
    plan.merge = _MergeInputs(a, b, c, _prepared_pair(a, c, multiplier), key, target, recorder, multiplier, dtype,
                              device, allow_nonfinite)  # fmt: skip
    result.merge = Command(["inpaint-advisor", "merge", "--inpaint", _path_of(a), "--model", _path_of(b), "--base",
                            _path_of(c), "--out", str(target), "--multiplier", repr(float(multiplier)), "--dtype",
                            dtype], "build")  # fmt: skip
    estimate = _size(b)  # the output is about B's size (fp16 like most fine-tunes)
    if plan.merge.pair is not None:
        for item in result.plan:
            if item.role in ("A", "C"):
                item.state, item.size = "prepared", None
    result.disk_needed = sum(_bytes(n) for n in plan.merge.needs) + estimate
    result.shared_disk = {_sha256(n) or _describe(n): _bytes(n) for n in plan.merge.needs
                          if n.role in ("A", "C") and _bytes(n)}  # fmt: skip


def _run_merge(m: _MergeInputs, match: Match, progress, merge_progress, offline: bool, result: BuildResult) -> None:
    """Fetch what is missing, merge into a hidden file beside ``target``, check it, then give it its name and
    record it. A kill at any point leaves either nothing under ``target`` or a complete file whose header
    names this recipe (adopted by the next run)."""
    from merge.engine import ENGINE_VERSION, MergeError, run_merge

    a, b, c, pair, needs, key, target, recorder = m.a, m.b, m.c, m.pair, m.needs, m.key, m.target, m.recorder
    multiplier, dtype, device, allow_nonfinite = m.multiplier, m.dtype, m.device, m.allow_nonfinite
    _check_space(files_dir(), sum(_bytes(n) for n in needs))
    paths = {n.role: _get(n, progress, result.downloads, offline, result.warnings) for n in needs}
    for n in needs:
        result.inputs[n.role] = BuildInput(n.role, str(paths[n.role]), n.identity if len(n.identity) == 64 else None,
                                           n.source.url if n.source else ("local" if n.local else "hf-folder"),
                                           _verified(n))  # fmt: skip
    if result.merge is not None:  # the files as fetched (a server names its download), not as predicted
        argv = list(result.merge.argv)
        for flag, role in (("--inpaint", "A"), ("--model", "B"), ("--base", "C")):
            argv[argv.index(flag) + 1] = str(paths[role]) if role in paths else argv[argv.index(flag) + 1]
        result.merge = Command(argv, result.merge.label)
    if pair is not None:  # made from files with these very hashes, checked when it was prepared
        for n in (a, c):
            result.inputs[n.role] = BuildInput(n.role, str(pair.delta), n.identity, f"prepared:{pair.key}", True)
    sources: dict[str, object] = {role: {"path": i.path, "source": i.source, "sha256": i.sha256}
                                  for role, i in result.inputs.items()}  # fmt: skip
    sources["model"] = {"id": match.model_id, "version": match.version_id, "name": match.name}
    sources["recipe_key"] = key  # what a later run reads to adopt this file after a kill before its record
    _remove_stale_staged(target)
    staged = target.with_name(f".{target.stem}.build-{os.getpid()}.safetensors")
    try:
        plan = _plan(pair, a, b, c, paths, staged, multiplier, dtype, device, progress, merge_progress, offline,
                     result, prepare_pair=m.prepare_pair)  # fmt: skip
        # the inputs must be the files checked (downloads, the user's files): one swapped since then fails the
        # build before the output has a name. B is hashed from its bytes as the merge reads them; A and C,
        # official files, by their cached hashes (a prepared pair has its own checks).
        plan.expected = {n.role.lower(): n.identity for n in (a, b, c) if len(n.identity) == 64
                         and not n.files and (n.local is None or n.local.is_file())  # a folder's is no file's hash
                         and n.role.lower() not in plan.recorded}  # fmt: skip
        plan.reread = {"b"}
        try:
            merged = run_merge(plan, title=target.stem, progress=merge_progress, sources=sources)
        finally:
            plan.close()
    except MergeError as exc:
        raise BuildError(str(exc), "hash-mismatch" if exc.reason == "changed" else "merge-refused") from None
    try:
        result.nonfinite = len(merged.nonfinite)
        if merged.nonfinite:
            inherited = _inputs_nonfinite(paths, result.pair, merged.nonfinite)  # the pair only if merged from
            if not (allow_nonfinite or inherited):
                raise BuildError(f"the build holds NaN/Inf in {len(merged.nonfinite)} tensors (e.g. "
                                 f"{merged.nonfinite[0]}) that its inputs do not: nothing was kept (allow it to "
                                 "keep such a file)", "nonfinite")  # fmt: skip
            result.warnings.append(f"NaN/Inf in {len(merged.nonfinite)} output tensors"
                                   + (" (its inputs hold them too)" if inherited else ", kept as asked"))
        _name(staged, target)
    finally:
        staged.unlink(missing_ok=True)
    # hashed as it was written where every input's hash was known up front; read again otherwise
    result.output = Output(str(target.resolve()), merged.bytes_written, merged.sha256) if merged.sha256 else \
        _output(target)
    result.action = "built"
    result.verified = all(i.verified for i in result.inputs.values())
    if not result.verified:
        result.warnings.append("built from inputs with no known SHA256: unverified (" +
                               ", ".join(r for r, i in result.inputs.items() if not i.verified) + ")")  # fmt: skip
    if recorder is not None:
        recorder.record_artifact(registry.Made(
            key=key, kind="built", path=target, sha256=result.output.sha256, model_id=match.model_id,
            version_id=match.version_id, a_sha256=result.inputs["A"].sha256, b_sha256=result.inputs["B"].sha256,
            c_sha256=result.inputs["C"].sha256, multiplier=multiplier, dtype=dtype, engine=ENGINE_VERSION))


def _copy_into(built: Path, target: Path, sha256: str) -> Output:
    """The build made elsewhere, copied to ``target`` (hidden, checked against its recorded SHA256, then named);
    a file already under that name is left alone unless it is that very build."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(target.parent / f".{target.name}.lock"):
        if target.exists():
            present = _output(target)
            if present.sha256.upper() == sha256.upper():
                return present
            raise BuildError(f"{target} exists and is another file: it is left as it is; the build is {built}",
                             "exists")  # fmt: skip
        staged = target.with_name(f".{target.stem}.build-{os.getpid()}.safetensors")
        try:
            shutil.copyfile(built, staged)
            copied = _output(staged)
            if copied.sha256.upper() != sha256.upper():
                raise BuildError(f"{built} changed since it was built (SHA256 {copied.sha256[:12]}, recorded "
                                 f"{sha256[:12]}): not copied", "hash-mismatch")  # fmt: skip
            _name(staged, target)
        finally:
            staged.unlink(missing_ok=True)
    return _output(target)


def _name(staged: Path, target: Path) -> None:
    """The finished output under its name, never over a file put there meanwhile (the lock keeps out builds,
    not a `merge`, a copy or a user)."""
    try:
        portable.rename_no_replace(staged, target)
    except FileExistsError:
        raise BuildError(f"{target} exists: another file took the name while this build ran; it is left as it is",
                         "exists") from None


def _remove_stale_staged(target: Path) -> None:
    """Hidden outputs of builds of ``target`` that were killed (their process is gone): removed, with the merge
    writer's own partial of them (``..<stem>.build-<pid>.safetensors.partial-<pid>``, a kill mid-merge)."""
    from merge import portable

    prefix = f".{target.stem}.build-"
    for p in [*target.parent.glob(f"{prefix}*"), *target.parent.glob(f".{prefix}*")]:
        pid = p.name.lstrip(".")[len(prefix) - 1:].split(".", 1)[0]
        if pid.isdigit() and not portable.pid_alive(int(pid)):
            p.unlink(missing_ok=True)


def _output_name(b: _Need, match: Match) -> str:
    """``<B's file stem>-inpainting.safetensors``, UI-friendly; a registry model's carries its version id (a
    Hub repo's, the repo), so a stranger's file named like a popular model's cannot take that model's name."""
    b_name_path = b.local or Path(safe_filename(b.source.name if b.source and b.source.name else match.name))
    stem = _stem(b_name_path)
    if b.origin == "user" or match.source == "file" or not match.version_id:
        return safe_filename(f"{stem}-inpainting.safetensors")
    source = sources.of_id(match.model_id or "")
    if source is None or match.model_id is None:
        return safe_filename(f"{stem}-inpainting.safetensors")
    return safe_filename(source.output_stem(stem, match.model_id, match.version_id) + ".safetensors")


def _adopt(target: Path, key: str, recorder: Registry | None, match: Match, multiplier: float, dtype: str) -> Output:
    """``target`` exists: it is this recipe's build when its header says so (a build killed between its rename
    and its record), and is then recorded; anything else is never overwritten, and the error says what it is."""
    from merge.engine import ENGINE_VERSION
    from merge.header import CheckpointError, read_header

    try:
        recipe = json.loads(read_header(target).metadata.get("inpaint_advisor.recipe", "{}"))
    except (CheckpointError, ValueError, OSError):
        recipe = None
    sources = recipe.get("sources") if isinstance(recipe, dict) else None
    if isinstance(sources, dict) and sources.get("recipe_key") == key:
        output = _output(target)
        if recorder is not None:
            inputs = recipe.get("inputs", {})
            recorder.record_artifact(registry.Made(
                key=key, kind="built", path=target, sha256=output.sha256, model_id=match.model_id,
                version_id=match.version_id, a_sha256=inputs.get("A", {}).get("sha256"),
                b_sha256=inputs.get("B", {}).get("sha256"), c_sha256=inputs.get("C", {}).get("sha256"),
                multiplier=multiplier, dtype=dtype, engine=ENGINE_VERSION))
        return output
    if isinstance(sources, dict) and sources.get("recipe_key"):
        what = "another recipe's build (other inputs, M or dtype)"
    elif isinstance(recipe, dict) and recipe.get("tool") == "inpaint-advisor":
        what = "a merge made by `inpaint-advisor merge`, not this build"
    else:
        what = "not a build of inpaint-advisor"
    raise BuildError(f"{target} exists and is {what}: it is left as it is; remove it or choose another folder",
                     "exists")


def _inputs_nonfinite(paths: dict, pair: PairUse | None, names: list[str]) -> bool:
    """Whether an input of the merge that ran already holds NaN/Inf in one of the output's non-finite tensors
    (then the build only carries them on); read for those tensors alone."""
    import torch

    from merge.checkpoint import open_checkpoint

    files = [paths["B"], *([pair.path] if pair is not None else [paths["A"], paths["C"]])]
    for path in files:
        with open_checkpoint(path) as src:
            for name in names:
                floating = name in src.tensors and src.tensors[name].dtype in ("F16", "BF16", "F32", "F64")
                if floating and not bool(torch.isfinite(src.read(name)).all()):
                    return True
    return False


def _prepared_pair(a: _Need, c: _Need, multiplier: float) -> PreparedPair | None:
    if len(a.identity) != 64 or len(c.identity) != 64:
        return None
    from merge import prepared

    return prepared.find(a.identity, c.identity, multiplier)


def _plan(pair, a: _Need, b: _Need, c: _Need, paths: dict, target: Path, multiplier: float, dtype: str, device: str,
          progress, merge_progress, offline: bool, result: BuildResult, prepare_pair: bool):  # fmt: skip
    """The merge to run: from the prepared pair where there is one (or, asked to, one can be made now), else A,
    B, C."""
    from merge import prepared
    from merge.engine import plan_merge

    if pair is not None:
        try:
            plan = prepared.plan_build(pair, paths["B"], target, dtype=dtype, device=device)
            result.pair = PairUse(pair.key, str(pair.delta), prepared_now=False)
            return plan
        except prepared.Unusable as exc:  # Gone (removed meanwhile, or failed its check): A, B, C below
            pair = None if isinstance(exc, prepared.Gone) else pair
            unusable = str(exc)
            for n in (a, c):
                paths[n.role] = _get(n, progress, result.downloads, offline, result.warnings)
                result.inputs[n.role] = BuildInput(n.role, str(paths[n.role]), n.identity,
                                                   n.source.url if n.source else "local", _verified(n))  # fmt: skip
            read = {"A": a, "C": c}  # the plan said "prepared": what this build reads instead
            result.plan = [_plan_item(read[i.role]) if i.role in read else i for i in result.plan]
    else:
        unusable = None
    plan = plan_merge(paths["A"], paths["B"], paths["C"], target, multiplier=multiplier, dtype=dtype, device=device)
    if pair is None and prepare_pair:
        plan = _from_prepared_pair(plan, a, c, paths, multiplier, dtype, device, merge_progress, result)
    if unusable is not None:  # said once it is known what the build did instead
        again = result.pair is not None and result.pair.prepared_now
        result.warnings.append(f"{unusable}: {'prepared again from A and C' if again else 'merged from A, B and C'}")
    return plan


def _from_prepared_pair(plan, a: _Need, c: _Need, paths: dict, multiplier: float, dtype: str, device: str,
                        merge_progress, result: BuildResult):  # fmt: skip
    """The build's plan from the family's prepared pair (A - M*C, made now if the cache lacks it) in place of
    the checked three-input ``plan``; ``plan`` itself where no pair can serve (unknown hashes of A or C, too
    little space for one, a B without some of C's tensors)."""
    from merge import prepared
    from merge.engine import MergeError

    if len(a.identity) != 64 or len(c.identity) != 64:
        return plan
    pair = prepared.find(a.identity, c.identity, multiplier)  # made meanwhile by another build
    if pair is None:
        needed = sum(4 * info.numel for info in plan.a.tensors.values())  # fp32, A's tensors
        free = shutil.disk_usage(_existing(prepared.root())).free
        if free < needed + plan.output_bytes + 2**30:
            result.warnings.append(f"no room to prepare the {plan.layouts['a'].family} pair ({needed / 1e9:.1f} GB) in "
                                   "the cache: merged from A, B and C")  # fmt: skip
            return plan
        try:
            # the pair written in the build's own pass (None: another build prepared it meanwhile)
            first = prepared.plan_first_build(paths["A"], paths["C"], paths["B"], plan.out, a.identity, c.identity,
                                              multiplier=multiplier, dtype=dtype, device=device)  # fmt: skip
            if first is not None:
                key = prepared.key_of(a.identity, c.identity, multiplier)
                result.pair = PairUse(key, str(prepared.root() / key / prepared.DELTA_FILE), prepared_now=True)
                plan.close()
                return first
            pair = prepared.find(a.identity, c.identity, multiplier)
        except prepared.Unusable:  # B lacks some of C's tensors: the pair is prepared for the next builds
            pair = None
        except MergeError as exc:
            result.warnings.append(f"the pair could not be prepared ({exc}): merged from A, B and C")
            return plan
    if pair is None:
        try:
            pair = prepared.prepare(paths["A"], paths["C"], a.identity, c.identity, multiplier=multiplier,
                                    progress=merge_progress)  # fmt: skip
        except MergeError as exc:
            result.warnings.append(f"the pair could not be prepared ({exc}): merged from A, B and C")
            return plan
        result.pair = PairUse(pair.key, str(pair.delta), prepared_now=True)
    else:
        result.pair = PairUse(pair.key, str(pair.delta), prepared_now=False)
    why = prepared.unusable_with(pair, plan.b)
    if why is not None:
        result.pair = None
        result.warnings.append(f"not built from the prepared pair ({why}): merged from A, B and C")
        return plan
    out = plan.out
    plan.close()
    return prepared.plan_build(pair, paths["B"], out, dtype=dtype, device=device)


def _existing(folder: Path) -> Path:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _sha256(need: _Need) -> str | None:
    return need.identity if len(need.identity) == 64 else None


def _describe(need: _Need) -> str:
    if need.files:
        return f"{need.folder.name} (diffusers folder, {len(need.files)} files)"
    if need.source is None:
        return str(need.local)
    return need.source.name or need.source.url


def _verified(need: _Need) -> bool:
    """The user's own file counts as their word; anything else as what its hash check said."""
    return all(_verified(p) for p in need.files) if need.files else need.checked
