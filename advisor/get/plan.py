"""What `get` will do for one model in one UI, settled before a byte is fetched: the answer it acts on (the
lookup's first recommendation that this UI can use, or the route asked for), every file with where it lands and
how it is checked, and the steps left to the user. Touches no file but the registry (as lookup does).

Each kind of answer becomes files in the UI's folders (advisor.local.uis):
- a release (the model's own, a sibling's, the model itself when it already inpaints): its registry file, into
  the UI's checkpoints;
- the official inpainting model: its pinned file, into checkpoints (or diffusion models, for a UNet alone);
- a build: `build`'s own plan, with the UI's checkpoints as its output folder;
- a route: its weights (never its configs: the UIs read the weights alone), each into the folder of its kind.
A better answer the UI cannot use is passed over with the reason, and the next one taken.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from advisor.advice import ladder, routes
from advisor.advice.lookup import LookupResult, Match, lookup
from advisor.build.builder import BuildError, BuildPlan, plan_build, registry_download
from advisor.build.cache import download_folder
from advisor.get import workflow
from advisor.get.result import CHECKPOINT_KINDS, Answer, GetError, GetResult, Placement
from advisor.local import uis
from advisor.local.cached_files import hub_file_path
from advisor.local.uis import Install
from advisor.safety import safe_filename
from crawler import families, registry
from data import settings
from data.settings import redact
from merge import hashing
from merge.header import CheckpointError

_WEIGHTS = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin", ".patch", ".gguf")
# where a route's files go when the route does not say: by the route's kind
_ROUTE_FOLDER = {"patch": "inpaint", "controlnet": "controlnet", "lora": "lora", "fill-model": "diffusion_model"}


@dataclass
class GetPlan:
    result: GetResult
    install: Install
    offline: bool
    build: BuildPlan | None = None


class _PassOver(Exception):
    """This answer cannot be acted on in this UI (the message says why): the next one is tried."""


def plan_get(query: str, *, root: str | os.PathLike = ".", ui: str | None = None, route: str | None = None,
             db: str | None = None, offline: bool = False) -> GetPlan:  # fmt: skip
    """The plan for making ``query`` ready to inpaint in the UI at ``root`` (``ui``: which one, when its folder
    does not say). Raises GetError when no answer can be acted on there."""
    if ui is not None and ui not in uis.ids():
        raise GetError(f"unknown UI {ui!r}: one of {', '.join(uis.ids())}", "usage")
    where = Path(root).expanduser().resolve()  # absolute: the manifest is read by other tools, elsewhere
    if not where.is_dir():
        what = "not a folder" if where.exists() else "no such folder"
        raise GetError(f"{where}: {what} (the UI's folder, where its files go)", "bad-query")
    install = uis.find(where, ui)
    if ui is not None and not install.recognised and (other := uis.find(where)).recognised:
        raise GetError(f"{where} is {other.name}'s folder, not {install.name}'s", "usage")
    if install.ui == "folder":
        raise GetError(f"{where} is not a UI folder inpaint-advisor recognises ({', '.join(uis.ids())}): "
                       "name the UI, or give its folder", "no-ui")  # fmt: skip
    if ui is None and not install.recognised:  # a bare models folder several UIs lay out alike
        alike = [uis.spec(u)["name"] for u in uis.ids() if uis.same_layout(u, install.ui)]
        raise GetError(f"{where} is the models folder of {' or '.join(alike)}: name the UI", "no-ui")
    found = lookup(query, db=db, offline=offline)
    if found.match is None or found.recommendation is None:
        why = "; ".join(found.notes) or ("several models match: name one by id" if found.candidates else "no match")
        raise GetError(f"nothing to get for “{query}”: {why}", "not-found")
    runs = uis.spec(install.ui).get("runs")
    lineage = {f["id"] for f in families.lineage(found.match.family)}
    if runs and lineage and not lineage & set(runs):
        fam = families.family(found.match.family) or {}
        raise GetError(f"{install.name} does not run {fam.get('name', found.match.family)} models: use a UI that "
                       "does (ComfyUI, SwarmUI, ...)", "no-route-for-ui")  # fmt: skip
    options = _options(found, route)
    passed: list[str] = []
    for rec in options:
        try:
            plan = _plan_for(rec, found, install, query, db, offline)
        except _PassOver as why:
            passed.append(f"{_title(rec)}: {why}")
            continue
        plan.result.passed_over = passed
        if rec.kind in CHECKPOINT_KINDS:  # the family's caveats are about its official model and builds
            plan.result.warnings[:0] = found.warnings
        _plan_workflow(plan.result, install)
        return plan
    raise GetError(f"nothing {install.name} can use for {found.match.name}: " + "; ".join(passed), "no-route-for-ui")


def _options(found: LookupResult, route: str | None) -> list[ladder.Recommendation]:
    every = [r for r in [found.recommendation, *found.alternatives] if r is not None and r.kind != "none"]
    if route is None:  # a stranger's release named after the model is fetched only when asked for
        return [r for r in every if r.kind != "community-release"]
    chosen = [r for r in every if r.route == route or (r.route is None and r.kind == route)]
    if not chosen:
        known = [r.route or r.kind for r in every]
        raise GetError(f"{route!r} is not an answer for {found.match.name if found.match else found.query} "
                       f"(its answers: {', '.join(known) or 'none'})", "usage")  # fmt: skip
    return chosen


def _title(rec: ladder.Recommendation) -> str:
    named = routes.spec(rec.route) if rec.route else None
    if named:
        return named["name"]
    if rec.kind == "build":
        return "an add-difference build"
    return rec.target.name if rec.target is not None else rec.kind


def _plan_for(rec: ladder.Recommendation, found: LookupResult, install: Install, query: str, db: str | None,
              offline: bool) -> GetPlan:  # fmt: skip
    assert found.match is not None  # plan_get asks only of a match
    answer = Answer(rec.kind, _title(rec), rec.reason, rec.route, rec.score)
    result = GetResult(query, "planned", install.ui, install.name, str(install.root), install.recognised,
                       found.match, answer)  # fmt: skip
    plan = GetPlan(result, install, offline)
    if rec.kind in CHECKPOINT_KINDS and uis.spec(install.ui).get("inpainting_checkpoints") is False:
        raise _PassOver(f"{install.name} does not inpaint with an inpainting checkpoint")
    if rec.kind in ("build", "built", "already-inpainting"):  # build's plan: it fetches a model that inpaints too
        _plan_build(plan, rec, query, db)
    elif rec.kind in CHECKPOINT_KINDS:
        result.files = [_checkpoint_file(rec, found.match, install, db)]
        result.steps = _checkpoint_steps(install, found.match.family, result.files[0].kind)
    else:
        _plan_route(plan, rec, db)
    for p in result.files:
        _settle(p, install)
        if p.state == "other-file":
            result.warnings.append(f"{p.destination} exists and is another file: get will not replace it (move "
                                   "it away, then run again)")  # fmt: skip
    result.disk_needed += sum(p.size or p.approx_size or 0 for p in result.files if p.state != "present")
    if result.action == "planned" and all(p.state == "present" for p in result.files) and plan.build is None:
        result.action = "ready"
    return plan


def _plan_workflow(result: GetResult, install: Install) -> None:
    result.workflow = workflow.workflow_for(result, install)
    if result.workflow is None:
        return
    result.workflow_path = str(install.models / "inpaint-advisor" / workflow.file_name(result))
    result.steps.append("open the workflow inpaint-advisor wrote for it in ComfyUI (Workflow > Open, or drop it "
                        "on the canvas), pick your image in Load Image and paint the mask on it (right-click > "
                        "Open in MaskEditor), write the prompt, and run it")  # fmt: skip
    if workflow.YOUR_MODEL in str(result.workflow):
        result.steps.append("in its Load Checkpoint, pick your model (the workflow names none: get was given "
                            "the model's name, not its file)")  # fmt: skip


def _plan_build(plan: GetPlan, rec: ladder.Recommendation, query: str, db: str | None) -> None:
    """A build (or what `build` does for the model: copy a build made before, or nothing where the file given
    already inpaints), into the UI's checkpoints."""
    out = plan.install.folder("checkpoint")
    if out is None:
        raise _PassOver(f"{plan.install.name} has no folder for checkpoints")
    try:
        built = plan_build(query, out=out, db=db, offline=plan.offline, force_build=rec.kind == "build")
    except BuildError as exc:
        if exc.code in ("is-a-base", "no-build-route", "no-registry", "no-file"):  # this answer cannot be had here
            why = "it is a base model, not a fine-tune: there is nothing to build" if exc.code == "is-a-base" else exc
            raise _PassOver(str(why)) from None
        raise
    result = plan.result
    result.build, result.disk_needed = built.result, built.result.disk_needed
    if built.merge is not None:
        result.checkpoint = str(built.merge.target)
    elif built.result.output is not None:
        result.checkpoint = built.result.output.path
    if built.settled:
        result.action = "nothing" if built.result.action == "already-inpainting" else "ready"
    else:
        plan.build = built
    result.steps = _checkpoint_steps(plan.install, plan.result.match.family if plan.result.match else None)
    if result.action == "nothing":
        _place_local(plan, Path(built.result.output.path) if built.result.output else None)


def _place_local(plan: GetPlan, path: Path | None) -> None:
    """The user's own file that already inpaints, where the UI does not look: linked (or copied) into its
    checkpoints, checked against its own SHA256."""
    install, result = plan.install, plan.result
    if path is None or any(path.resolve().is_relative_to(f.resolve()) for f in install.folders("checkpoint")):
        return
    sha = (hashing.cached(path, autov3=False) or hashing.file_hashes(path, autov3=False)).sha256.upper()
    result.files = [Placement("checkpoint", safe_filename(path.name), str(_folder(install, "checkpoint")), str(path),
                              sha, path.stat().st_size, "your file", label="your model", _cached=(str(path),))]
    result.action = "planned"
    result.checkpoint = result.files[0].destination


def _checkpoint_file(rec: ladder.Recommendation, match: Match, install: Install, db: str | None) -> Placement:
    """The file of a release or of the official model, in the UI's folder for its kind."""
    target = rec.target
    if target is None:
        raise _PassOver("no file to fetch")
    if rec.kind == "official":
        spec = (families.family(match.family) or {}).get("inpaint") or {}
        if spec.get("layout") == "diffusers" or not target.file or "/" in target.file:
            raise _PassOver(f"published as a diffusers folder, which {install.name} does not load as one file")
        kind = spec.get("file_kind", "checkpoint")
        folder = _folder(install, kind)
        sites = settings.current()
        url = settings.Sites(hf_endpoint=sites.hf_endpoint).hub_file(target.repo or "", target.file)
        return Placement(kind, safe_filename(target.file), str(folder), redact(url), _upper(target.sha256),
                         target.size, "data/families.json" if target.sha256 else None, label="official",
                         _fetch_url=url, _token=sites.hf_token,
                         _cached=(str(hub_file_path(target.repo, target.file)),) if target.repo else ())  # fmt: skip
    return _registry_file(rec, install, db)


def _registry_file(rec: ladder.Recommendation, install: Install, db: str | None) -> Placement:
    target = rec.target
    assert target is not None and target.model_id is not None  # a release is a registry version
    reader = registry.open_reader_if_any(db)
    try:
        model, _, file = registry_download(rec.kind, reader, target.model_id, target.version_id)
    except BuildError as exc:
        raise _PassOver(str(exc).split(": ", 1)[-1]) from None
    finally:
        if reader is not None:
            reader.close()
    if file.folder:
        raise _PassOver(f"published as a diffusers folder, which {install.name} does not load as one file")
    folder = _folder(install, "checkpoint")
    name = safe_filename(file.name or f"{model.name}.safetensors")
    # where a build of this model left the same file: the Hub's layout for a Hub file, the source's otherwise
    cached = str(hub_file_path(file.repo, file.path) if file.repo and file.path else download_folder(file) / name)
    return Placement("checkpoint", name, str(folder), redact(file.url), _upper(file.sha256), file.size,
                     f"the registry ({model.source})" if file.sha256 else None, label=rec.kind, _fetch_url=file.url,
                     _token=file.token, _cached=(cached,))  # fmt: skip


def _folder(install: Install, kind: str) -> Path:
    folder = install.folder(kind)
    if folder is None:
        raise _PassOver(f"{install.name} has no folder for {uis.kinds().get(kind, kind)}")
    return folder


def _checkpoint_steps(install: Install, family: str | None, kind: str = "checkpoint") -> list[str]:
    """How the UI takes an inpainting checkpoint (or a UNet alone), and in ComfyUI what the family needs beyond
    that (FLUX's guidance)."""
    spec = uis.spec(install.ui)
    steps = [s for s in (spec.get("install_step"), spec.get(f"{kind}_how")) if s]
    specific = routes.checkpoint_how(family)
    if install.ui == "comfyui" and specific != routes.checkpoint_how(None):
        steps.append(specific)
    return steps


def _plan_route(plan: GetPlan, rec: ladder.Recommendation, db: str | None = None) -> None:
    install, result = plan.install, plan.result
    spec = routes.spec(rec.route or "")
    if spec is None:
        raise _PassOver("not a route of data/routes.json")
    names = uis.spec(install.ui)["routes_ui"]
    use = next((u for name in names for u in spec["ui"] if u["ui"] == name), None)
    if use is None:
        raise _PassOver(f"no known way to use it in {install.name} (it is used in "
                        f"{', '.join(dict.fromkeys(u['ui'] for u in spec['ui']))})")  # fmt: skip
    if not spec["files"] and spec.get("where"):
        raise _PassOver(f"its weights are not on the Hub ({spec['where']}): fetch them by hand")
    sites = settings.current()
    hub = settings.Sites(hf_endpoint=sites.hf_endpoint)
    checked = _route_checks(db)
    for f in spec["files"]:
        if not f["file"].lower().endswith(_WEIGHTS) or f["file"] not in use.get("files", [f["file"]]):
            continue  # a config beside the weights (the UIs read the weights alone), or one this UI ships itself
        kind = f.get("kind") or _ROUTE_FOLDER.get(spec["kind"])
        if kind is None:
            raise _PassOver(f"no known folder for its {f['file']}")
        url = hub.hub_file(f["repo"], f["file"])
        sha, size, pinned_by = f.get("sha256"), f.get("size"), f.get("sha256_source")
        state = checked.get((f["repo"], f["file"]))
        if not sha and state is not None and state.alive and state.file_found and state.sha256:
            # no pin in data/: the Hub's own listing, as the last Hub crawl read it, checks the file instead
            sha, size, pinned_by = state.sha256, size or state.size, f"the Hub's listing ({state.checked_at[:10]})"
        result.files.append(Placement(
            kind, safe_filename(f.get("save_as") or f["file"].rsplit("/", 1)[-1]), str(_folder(install, kind)),
            redact(url), _upper(sha), size, pinned_by, _approx(f.get("size_hint")),
            label=spec["name"], _fetch_url=url,
            _token=sites.hf_token, _cached=(str(hub_file_path(f["repo"], f["file"])),)))  # fmt: skip
    if spec.get("gated") and not sites.hf_token:
        result.warnings.append(f"{spec['name']} is gated: accept its licence on its Hub page, and set HF_TOKEN")
    for_kind = uis.spec(install.ui).get("needs", {})
    needs = [*use.get("needs", []), *(for_kind[p.kind] for p in result.files if p.kind in for_kind)]
    result.needs = list(dict.fromkeys(needs))
    result.steps = [use["how"]]


def _size_fits(p: Placement, size: int) -> bool:
    if p.size:
        return size == p.size
    if p.approx_size:  # the Hub rounds to three digits
        return abs(size - p.approx_size) <= p.approx_size * 0.01 + 1024
    return True


_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}


def _approx(hint: str | None) -> int | None:
    """Bytes from a size as the Hub shows it ("1.32 GB", "52.6 kB")."""
    number, _, unit = (hint or "").strip().partition(" ")
    try:
        return int(float(number) * _UNITS[unit.lower()])
    except (ValueError, KeyError):
        return None


def _route_checks(db: str | None) -> dict:
    """What the last Hub crawl found of each route file (empty without a registry)."""
    reader = registry.open_reader_if_any(db)
    if reader is None:
        return {}
    try:
        return reader.route_checks()
    finally:
        reader.close()


def _upper(sha: str | None) -> str | None:
    return sha.upper() if sha else None


def _settle(p: Placement, install: Install) -> None:
    """Whether the file is already in place, in any folder the UI reads its kind from (by SHA256 where one is
    pinned), half-fetched, or another file under its name. A file of another size is never read to hash it."""
    for folder in [Path(p.folder), *(f for f in install.folders(p.kind) if f != Path(p.folder))]:
        target = folder / p.name
        if not target.is_file() or not _size_fits(p, target.stat().st_size):
            continue
        try:
            sha = (hashing.cached(target, autov3=False) or hashing.file_hashes(target, autov3=False)).sha256.upper()
        except (OSError, CheckpointError):
            sha = None
        if sha is not None and (p.sha256 is None or sha == p.sha256):
            p.folder, p.state, p.path, p.verified = str(folder), "present", str(target), p.sha256 is not None
            p.sha256 = sha
            return
    target = Path(p.destination)
    if target.exists() or target.is_symlink():
        p.state = "other-file"
    elif Path(p.folder).is_dir() and any(Path(p.folder).glob(".inpaint-advisor-*.partial")):
        p.state = "partial"
