"""The recommendation ladder (the article's advice, most specific first):

already an inpainting model -> its own inpainting release -> a sibling inpainting model by the same creator ->
then, weighed together for the model's family and markers (advisor.advice.routes, data/routes.json): the official
inpainting checkpoint, a custom build by add-difference, and the routes that need no inpainting checkpoint
(the Fooocus patch, ControlNets, adapters, fill models, sampler methods) -> no inpainting route.
"""

import re
from dataclasses import dataclass, field

from advisor.advice import routes
from advisor.advice.commands import Command, EnvRef
from advisor.advice.facts import Facts, Release
from advisor.safety import safe_filename, shorten
from crawler import families, sources
from crawler.registry.records import LinkRecord  # a record type: the ladder never reaches the registry
from data.settings import Sites
from merge.distance import BaseDistance
from merge.layout import MERGEABLE


@dataclass
class Target:
    name: str
    source: str  # civitai | hf
    model_id: str | None = None
    version_id: str | None = None
    repo: str | None = None
    file: str | None = None
    size: int | None = None
    sha256: str | None = None
    url: str | None = None  # a page to read
    download_url: str | None = None


@dataclass
class Recommendation:
    # built | already-inpainting | own-release | sibling-release | community-release | official | build | none,
    # or a route's kind
    # (routes.KINDS: patch | controlnet | adapter | lora | fill-model | sampler)
    kind: str
    reason: str
    target: Target | None = None
    command: Command | None = None
    evidence: list[str] = field(default_factory=list)
    downloads: list[Command] = field(default_factory=list)  # what to fetch before ``command`` (a build's A, B, C)
    for_your_version: bool = False  # a release made for the version asked about (build downloads it, no merge)
    how: list[str] = field(default_factory=list)  # "UI: the node, extension or pipeline to use it with"
    score: int | None = None  # the weighing of official, build and routes (None: pinned above them)
    route: str | None = None  # the route's id in data/routes.json
    run: Command | None = None  # the one command that does it all (a build: `inpaint-advisor build`), if any


@dataclass
class Subject:
    """What the ladder is asked about (a registry model, a local file or a bare family)."""

    name: str
    family: str | None
    base_model: str | None = None
    is_inpainting: bool = False
    model_id: str | None = None
    version_id: str | None = None
    version_name: str | None = None
    asked: str | None = None  # what the user typed, when it named a family ("SDXL Lightning"): its markers count
    versions: list = field(default_factory=list)  # registry VersionRecords, newest first
    file: str | None = None  # B for a build: a local path or the version's file name ("name/" for a folder)
    local: bool = False  # ``file`` is the user's own path (kept as given), not a name from a registry
    prediction: list[str] = field(default_factory=list)
    inpaint_evidence: list[str] = field(default_factory=list)
    same_file_models: list[str] = field(default_factory=list)  # the same checkpoint on another source
    same_file_versions: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)  # the source's tags of the model, lower-case
    distance: BaseDistance | None = None  # its file's UNet against its base's, measured where both are at hand


def _release_target(release: Release, sites: Sites) -> Target:
    """Where to get a registry version, as its source says."""
    model, version = release.model, release.version
    where = sources.get(model.source).where(model, version, sites)
    return Target(name=where.name, source=model.source, model_id=model.id, version_id=version.id,
                  repo=where.repo, file=where.file, sha256=version.sha256, url=where.page_url,
                  download_url=where.download_url)  # fmt: skip


def _download_command(t: Target, label: str = "download") -> Command:
    """`hf download` for a Hub repo's file or folder, curl for any other source's download URL (its token as a
    header curl keeps off other hosts on redirect); options before ``--`` and the positional names after it, so
    that no name can pass for an option."""
    if t.repo is None:
        assert t.download_url is not None  # a registry version's (_release_target): its source built the URL
        token = EnvRef(sources.get(t.source).token_variable, "Authorization: Bearer ")
        return Command(["curl", "-L", "--fail", "-H", token, "-o", safe_filename(t.file), t.download_url], label)
    if t.file and "/" not in t.file:
        return Command(["hf", "download", "--local-dir", ".", "--", t.repo, t.file], label)
    folder = safe_filename(t.repo.split("/")[-1], "model")
    excludes = [arg for pattern in FOLDER_EXCLUDES for arg in ("--exclude", pattern)]
    return Command(["hf", "download", "--local-dir", folder, *excludes, "--", t.repo], label)


def live_mirror(spec: dict, checks: dict) -> tuple[str, str | None]:
    """(repo, note): the first mirror the last Hub crawl found alive and serving the file data/ pins (as
    crawler.health counts them), else the first data/ marks alive. The note says when a crawl found the usual
    mirror gone or changed."""

    def alive(m: dict) -> bool:
        state = checks.get(m["repo"])
        return state.alive and state.matches if state is not None else bool(m.get("alive"))

    usual = next((m for m in spec["mirrors"] if m.get("alive")), spec["mirrors"][0])["repo"]
    chosen = next((m["repo"] for m in spec["mirrors"] if alive(m)), usual)
    note = None
    if chosen != usual:
        state = checks[usual]
        what = "gone" if not state.alive else "serving another file"
        note = f"{usual} was {what} when checked on {str(state.checked_at)[:10]} ({state.detail}): using {chosen}."
    elif chosen in checks and not checks[chosen].alive:
        note = f"{chosen} was gone when last checked ({checks[chosen].detail}) and no mirror is known to be alive."
    return chosen, note


# A diffusers folder's download skips the formats the merge never reads (the same weights as .bin, Flax, ONNX).
FOLDER_EXCLUDES = ["*.bin", "*.msgpack", "*.onnx", "*.onnx_data", "*.pb", "*.h5", "*.ckpt"]


def _hf_target(fam: dict, which: str, facts: Facts, notes: list | None = None) -> Target | None:
    spec = fam.get(which)
    if not spec:
        return None
    repo, note = live_mirror(spec, facts.official_checks)
    if note and notes is not None and note not in notes:
        notes.append(note)
    file = spec.get("file")
    folder = spec.get("layout") == "diffusers"
    return Target(
        name=repo if not file or folder else f"{repo} / {file}",
        source="hf",
        repo=repo,
        file=file,  # a folder's checked file (its UNet): the download is the whole folder, so no size is shown
        size=None if folder else spec.get("size"),
        sha256=spec.get("sha256"),
        url=facts.sites.hub_page(repo),
        download_url=facts.sites.hub_file(repo, file) if file and not folder else None,
    )


def _rank_releases(subject: Subject, links: list[LinkRecord]) -> list[tuple[LinkRecord, str]]:
    """Each inpainting release with its note, the closest to the user's version first: the one made for it (or
    for the same file on another source), then the nearest by the model's version order (on a tie the newer;
    with no version asked, the newest); detection confidence only breaks ties."""
    yours_anywhere = {subject.version_id, *subject.same_file_versions} if subject.version_id else set()
    positions = {v.id: v.position for v in subject.versions}  # 0 = the newest (Civitai's order, by date)
    yours = positions.get(subject.version_id)

    def distance(link) -> tuple[float, bool]:
        theirs = positions.get(link.parent_version_id)
        if theirs is not None and yours is not None:
            return abs(theirs - yours), theirs > yours  # (how far, older)
        if theirs is not None:  # no version asked: the newest first
            return theirs, False
        return float("inf"), True  # made for a version the registry does not list

    def key(link):
        far, older = distance(link)
        return (link.parent_version_id not in yours_anywhere, far, older, -link.confidence, link.inpaint_version_id)

    ranked = []
    for link in sorted(links, key=key):
        if link.parent_version_id in yours_anywhere:
            note = "made for your version"
        else:
            far, older = distance(link)
            if not subject.version_id:
                note = "the newest inpainting release"
            elif far == float("inf"):
                note = "made for another version"
            else:
                note = "made for " + ("an older" if older else "a newer") + " version than yours"
        ranked.append((link, note))
    return ranked


def build_recommendation(subject: Subject, fam: dict, facts: Facts, notes: list | None = None) -> Recommendation:
    a, c = _hf_target(fam, "inpaint", facts, notes), _hf_target(fam, "base", facts, notes)
    # the data names both for every family with an official inpainting model (a Hub repo each)
    assert a is not None and a.repo is not None and c is not None and c.repo is not None
    if fam["inpaint"]["layout"] == "diffusers":
        a_path = safe_filename(a.repo.split("/")[-1], "inpainting") + "/"  # the downloaded folder, read as is
    else:
        a_path = safe_filename(a.file)
    source = sources.of_id(subject.model_id) if subject.model_id else None
    if subject.local and subject.file is not None:  # the user's own file or folder: their path, as they gave it
        b = subject.file
    elif source is not None and subject.file and subject.file.endswith("/"):
        b = safe_filename(subject.file.rstrip("/"), "model") + "/"  # a source's folder of files, as fetched
    elif subject.file:
        b = safe_filename(subject.file)
    else:  # a bare family: a placeholder for the user's own file
        b = f"<{safe_filename(shorten(subject.name), 'your')} checkpoint>.safetensors"
    name = b.rstrip("/").rsplit("/", 1)[-1]
    stem = name.rsplit(".", 1)[0] if not b.endswith("/") and "." in name else name
    out = safe_filename(f"{stem if subject.file else 'my-model'}-inpainting.safetensors")
    command = Command(["inpaint-advisor", "merge", "--inpaint", a_path, "--model", b, "--base", safe_filename(c.file),
                       "--out", out, "--multiplier", "1.0"], "build")  # fmt: skip
    downloads = [_download_command(a, "download A"), _download_command(c, "download C")]
    fetch_b = source.fetch_argv(subject.model_id, subject.file, b) if source and subject.model_id and \
        subject.file and not subject.local else None  # fmt: skip
    if fetch_b is not None:
        downloads.insert(1, Command(list(fetch_b), "download B"))
    asked = source.query(subject.model_id, subject.version_id) if source and subject.model_id else \
        subject.file if subject.local else None  # fmt: skip
    return Recommendation(
        "build",
        f"Make an inpainting version of {shorten(subject.name)} itself: A = {a.repo} (official {fam['name']} "
        "inpainting), "
        f"B = your model, C = {c.repo} (its base), M = 1.0. Keeps your model's style, unlike the official model.",
        Target(name=out, source="build", repo=a.repo, file=a.file),
        command,
        downloads=downloads,
        run=Command(["inpaint-advisor", "build", "--", asked], "build") if asked else None,
    )


SETTLED = ("built", "already-inpainting", "own-release", "sibling-release",
           "community-release")  # answers no family caveat is about


def recommend(subject: Subject, facts: Facts | None = None) -> tuple[Recommendation, list[Recommendation], list[str]]:
    """(recommendation, alternatives, warnings) for ``subject``, weighing what the registry knows of it
    (``facts``, advisor.advice.facts.gather; none for a bare family or a file the registry lacks). The family's
    caveats (about its official pair, its merge, its routes) are warnings where the answer is one of those, and
    the evidence of the official model and the build where the model has an answer of its own."""
    rec, alternatives, warnings = _recommend(subject, facts or Facts())
    caveats = (families.family(subject.family) or {}).get("caveats", [])
    checkpoints = [alt for alt in alternatives if alt.kind in ("official", "build")]
    # a family's caveats are about its official pair, unless it has none: where the answer is something else,
    # they go with that pair, once
    if rec.kind not in SETTLED and not (rec.route is not None and checkpoints):
        return rec, alternatives, [*caveats, *warnings]
    for alt in checkpoints:
        alt.evidence += [f"caveat: {c}" for c in caveats]
    return rec, alternatives, warnings


def _recommend(subject: Subject, facts: Facts) -> tuple[Recommendation, list[Recommendation], list[str]]:
    alternatives: list[Recommendation] = []
    warnings: list[str] = []
    own_fam = families.family(subject.family)
    if own_fam and own_fam.get("media", "image") in _MEDIA:  # no image route or checkpoint fits a video model
        reason = (f"{own_fam['name']} is {_MEDIA[own_fam['media']]}, not an image checkpoint: no inpainting model, "
                  "merge or route applies to it.")  # fmt: skip
        return Recommendation("none", reason), alternatives, warnings
    listed = families.civitai_base_model(subject.base_model) if own_fam is None else None
    if listed is not None and listed["media"] in _MEDIA:  # nor does an image inpainting release, of one
        return Recommendation("none", _unknown_base(subject.base_model)), alternatives, warnings

    if subject.is_inpainting:
        return (
            Recommendation(
                "already-inpainting",
                f"{shorten(subject.name)} is itself an inpainting model: use it as is.",
                evidence=subject.inpaint_evidence,
            ),
            alternatives,
            warnings,
        )

    built = facts.builds
    # "built here" only for a build of this very version; a build of another version is an alternative
    made = next((a for a in built if a.kind == "built" and a.version_id == subject.version_id), None)
    other_builds = [a for a in built if a.kind == "built" and a is not made]
    links = facts.links
    own = [ln for ln in links if ln.kind == "same-model"]
    sibling = [ln for ln in links if ln.kind == "sibling-model"]
    rec = None
    if made is not None:
        rec = Recommendation("built", f"Use the inpainting version built here on {str(made.created_at)[:10]}: "
                             f"{made.path}.", Target(name=made.path, source="local", file=made.path, size=made.size,
                                                     sha256=made.sha256))  # fmt: skip
    for other in other_builds[:1]:  # the newest build of another version, named as such
        alternatives.append(Recommendation(
            "built", f"A build made here on {str(other.created_at)[:10]} for another version of this model "
            f"({other.version_id or 'unknown'}): {other.path}.",
            Target(name=other.path, source="local", file=other.path, size=other.size, sha256=other.sha256)))
    for kind, group in (("own-release", own), ("sibling-release", sibling)):
        old = [ln for ln in group if _old_lineage(subject, ln, facts)]
        if old:
            group = [ln for ln in group if ln not in old]
            made_for = _lineage_end(subject)
            warnings.append(f"{shorten(subject.name)} is a new lineage after {made_for}: its inpainting release "
                            f"{facts.releases[old[0].inpaint_version_id].version.name} was made for the old one, "
                            "so it is not offered (ask for that version to get it).")  # fmt: skip
        if not group:
            continue
        (link, note), *others = _rank_releases(subject, group)
        target = _release_target(facts.releases[link.inpaint_version_id], facts.sites)
        what = (
            "its creator's inpainting release" if kind == "own-release" else "the creator's separate inpainting model"
        )
        r = Recommendation(kind, f"Use {what}: {target.name} ({note}).", target, _download_command(target),
                           list(link.evidence), for_your_version=note == "made for your version")  # fmt: skip
        r.evidence += [f"also: {_release_target(facts.releases[other.inpaint_version_id], facts.sites).name} ({why})"
                       for other, why in others]  # fmt: skip
        if "version" in note and note != "made for your version":
            warnings.append(f"The inpainting release was {note}.")
        if rec is None:
            rec = r
        else:
            alternatives.append(r)

    said = " ".join(x for x in (subject.name, subject.version_name, subject.asked) if x)
    marks = routes.markers_of(said, subject.base_model, subject.prediction, subject.family, subject.tags)
    marks = routes.with_distance(marks, subject.distance)
    weighed: list[Recommendation] = []
    official = families.official_target(subject.family)
    if official is not None:
        inpainting = _hf_target(official, "inpaint", facts, warnings)
        assert inpainting is not None  # official_target's family has an official inpainting model
        approx = official["id"] != subject.family
        reason = (f"Use the official {official['name']} inpainting model"
                  + (f", the usual stand-in for {own_fam['name']} (no official one exists)." if approx and own_fam
                     else "."))  # fmt: skip
        off = Recommendation("official", reason, inpainting, _download_command(inpainting))
        if approx:
            warnings.append(f"{own_fam['name'] if own_fam else subject.family} differs from {official['name']}: "
                            "expect lower quality than with a dedicated inpainting model.")  # fmt: skip
        build = build_recommendation(subject, official, facts, warnings) if official["id"] in MERGEABLE else None
        if official["id"] == "sdxl" and build:
            build.evidence.append("C must carry the fp16-fix VAE the SDXL inpainting UNet was trained with.")
        if "v_pred" in subject.prediction:
            warnings.append("Your model predicts v (v_pred marker): the official inpainting model predicts epsilon; "
                            "the merge keeps your markers, test the result.")  # fmt: skip
        for checkpoint in (off, build):
            if checkpoint is not None:
                checkpoint.score, penalties = routes.checkpoint_weight(checkpoint.kind, subject.family, marks)
                checkpoint.evidence += [f"weighed down: {p}" for p in penalties]
                if subject.distance is not None and "far-from-base" not in marks:
                    checkpoint.evidence.append(routes.distance_note(subject.distance))
                checkpoint.how = [routes.checkpoint_how(official["id"])]
                weighed.append(checkpoint)
    for release in facts.community[:1]:  # another creator's inpainting version of this very model
        weighed.append(_community_recommendation(subject, release, facts, marks))
    weighed += [_route_recommendation(route, facts) for route in routes.routes_for(subject.family, marks)]
    weighed.sort(key=lambda r: -_weight(r))  # stable: on a tie, the official model, a build, then the data's order
    if rec is None and weighed and weighed[0].route is not None and own_fam:
        beaten = [_CHECKPOINT_NAMES[r.kind] for r in weighed[1:] if r.route is None]
        if beaten:
            weighed[0].reason += f" For {own_fam['name']} models it usually inpaints better than {' or '.join(beaten)}."
    for r in weighed:
        if rec is None:
            rec = r
        else:
            alternatives.append(r)
    if rec is None:
        if own_fam:
            reason = f"{own_fam['name']} has no official inpainting model, no merge recipe and no known route."
        else:
            reason = _unknown_base(subject.base_model)
        rec = Recommendation("none", reason)
    return rec, alternatives, warnings


_MEDIA = {"video": "a video model", "audio": "an audio model", "3d": "a 3D model generator",
          "upscaler": "an upscaler"}  # fmt: skip
_PROBE = "`inpaint-advisor probe FILE` classifies a downloaded file from its tensors"


def _unknown_base(base_model: str | None) -> str:
    """Why there is no answer for a model of no known family: what its base model is, as far as Civitai's own
    list of base models says, and whose gap it is."""
    if not base_model:
        return f"The base model of this model is not recorded: {_PROBE}."
    if (joke := families.not_an_image_model(base_model)) is not None:
        return f"{base_model} is {joke['what']}, not an image checkpoint: no inpainting model, merge or route applies."
    listed = families.civitai_base_model(base_model)
    if listed is None:
        return f"The base model {base_model} is unknown to inpaint-advisor and not in Civitai's list: {_PROBE}."
    if listed["media"] in _MEDIA:
        return (f"{base_model} is {_MEDIA[listed['media']]} on Civitai ({listed['ecosystem']}), not an image "
                "checkpoint: no inpainting model, merge or route applies to it.")  # fmt: skip
    if (api := families.api_only(base_model)) is not None:
        edits = f"; {api['edits']}" if api.get("edits") else ""
        return (f"{base_model} is {api['name']}, served only through its maker's API: there are no weights to "
                f"inpaint with locally{edits}.")  # fmt: skip
    if listed["media"] == "other":
        return f'Civitai lists the base model as "Other", which says nothing of its architecture: {_PROBE}.'
    return (f"{base_model} ({listed['ecosystem']}) is an image base model that Civitai lists and inpaint-advisor "
            "has no inpainting data for yet: a gap of this tool, not of your model.")  # fmt: skip


# a version named end-of-life ("v1.2.2-EOL") ended its lineage: a later version is a new maintainer's (creators
# also mark superseded versions "deprecated": that is no new lineage)
_LINEAGE_END = {"eol"}


def _lineage_end(subject: Subject):
    """The nearest version older than the subject's whose name says the lineage ended there."""
    positions = {v.id: v.position for v in subject.versions}
    yours = positions.get(subject.version_id or "")
    if yours is None:
        return None
    ended = [v for v in subject.versions if v.position > yours
             and set(re.split(r"[^a-z0-9]+", v.name.lower())) & _LINEAGE_END]  # fmt: skip
    end = min(ended, key=lambda v: v.position, default=None)
    return end.name if end is not None else None


def _old_lineage(subject: Subject, link: LinkRecord, facts: Facts) -> bool:
    """A release made for a version of the lineage that ended before the subject's version, whose own name does
    not name the subject's version ("unless the model says so")."""
    end = _lineage_end(subject)
    if end is None:
        return False
    positions = {v.id: v.position for v in subject.versions}
    # the version it was made for, else (a version of this very model) where it stands among the versions
    made_for = positions.get(link.parent_version_id or "", positions.get(link.inpaint_version_id))
    end_at = next(v.position for v in subject.versions if v.name == end)
    release = set(re.split(r"[^a-z0-9.]+", facts.releases[link.inpaint_version_id].version.name.lower()))
    yours = [t for t in re.split(r"[^a-z0-9.]+", (subject.version_name or "").lower()) if t]
    says_yours = bool(yours) and yours[0] in release  # a whole word: "v1" is not inside "v1.2.2-eol"
    return made_for is not None and made_for >= end_at and not says_yours


def _community_recommendation(subject: Subject, release: Release, facts: Facts, marks: dict) -> Recommendation:
    target = _release_target(release, facts.sites)
    who = release.model.creator or "another creator"
    r = Recommendation("community-release", f"Or try {target.name}, which {who} published as an inpainting "
                       "version of this model: not its creator's release, and nothing here shows it was made from "
                       "it; check its page first.", target, _download_command(target),
                       [f"named after the model, of the same base model, by {who}",
                        f"{release.model.downloads:,} downloads" if release.model.downloads else "downloads unknown",
                        "not its creator's own release: check its page before trusting it"])  # fmt: skip
    r.score, penalties = routes.checkpoint_weight("community", subject.family, marks)
    r.evidence += [f"weighed down: {p}" for p in penalties]
    r.how = [routes.checkpoint_how(subject.family)]
    return r


def _weight(r: Recommendation) -> int:
    assert r.score is not None  # every weighed recommendation has its score (checkpoint_weight, a route's)
    return r.score


_CHECKPOINT_NAMES = {"official": "the official inpainting model", "build": "an add-difference build",
                     "community-release": "another creator's inpainting version"}  # fmt: skip


def _route_recommendation(route: routes.Route, facts: Facts) -> Recommendation:
    """A route as a recommendation: its first Hub file as the target, every file as a download."""
    checks = facts.route_checks
    evidence = [f"known trouble: {r}" for r in route.reasons]
    target = Target(name=route.name, source="method", url=route.sources[0] if route.sources else None)
    if route.files:
        first = route.files[0]
        state = checks.get((first.repo, first.file))
        target = Target(name=f"{first.repo} / {first.file}", source="hf", repo=first.repo, file=first.file,
                        size=first.size or (state.size if state else None),
                        sha256=first.sha256 or (state.sha256 if state else None), url=facts.sites.hub_page(first.repo),
                        download_url=facts.sites.hub_file(first.repo, first.file))  # fmt: skip
        for f in route.files:
            state = checks.get((f.repo, f.file))
            if state is not None and not (state.alive and state.file_found):
                evidence.append(f"{f.repo}/{f.file} was not on the Hub when checked on {state.checked_at[:10]} "
                                f"({state.detail})")  # fmt: skip
    elif route.where:
        evidence.append(f"weights: {route.where}")
    if route.gated:
        evidence.append("gated: accept the licence on its Hub page; downloads need HF_TOKEN")
    if route.licence:
        evidence.append(f"licence: {route.licence}")
    evidence += [f"source: {u}" for u in route.sources]
    downloads = [Command(["hf", "download", "--local-dir", ".", "--", f.repo, f.file], f"download {f.file}")
                 for f in route.files]  # fmt: skip
    return Recommendation(route.kind, f"{route.name}: {route.summary}.", target, None, evidence, downloads,
                          how=route.how, score=route.score, route=route.id)  # fmt: skip


def choose_version(versions: list, version_id: str | None, asked: str = ""):
    """The version the user means: by id (a URL's, a hash's, or the one advisor.advice.match read in a name), else the
    newest non-inpainting one, and of those the newest without a speed marker (Hyper, Lightning, Turbo, LCM, ...;
    by its name or base model) unless ``asked``, the user's words, carries one: a careful reader of "Realistic
    Vision" means V6.0 B1, not the V5.1 Hyper uploaded after it."""
    if version_id:
        return next((v for v in versions if v.id == version_id), None)
    normal = [v for v in versions if not v.is_inpainting]
    fast = "distilled" in routes.markers_of(asked, None, [], None)
    as_asked = [v for v in normal if ("distilled" in routes.markers_of(v.name, v.base_model, [], None)) == fast]
    return (as_asked or normal or versions or [None])[0]
