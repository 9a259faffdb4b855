"""`lookup`: resolve whatever the user pasted to a model, then run the recommendation ladder.

Registry first; a Civitai model, hash or name that is not there is fetched live and stored (unless offline;
with no registry yet, into a scratch one: a lookup never creates a registry); without a network, the bundled
data still answers for families, official checkpoints and local files.
"""

import contextlib
import functools
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from advisor.advice import facts, ladder, match
from advisor.advice.query import CHECKPOINT_SUFFIXES, Query, QueryError, parse_query, shown
from advisor.local.base_distance import measure
from advisor.local.probe import probe
from crawler import families, registry, sources
from crawler.registry import ModelRecord, Reader, normalize_name
from data import settings
from data.errors import InpaintAdvisorError
from merge.distance import BaseDistance

GOOD_ENOUGH = 80.0  # a candidate batch with a name this close ends the search for wider ones
OTHER_FAMILY_NAMED = 10.0  # what a name that says another family than the query's costs it


@dataclass
class Match:
    source: str  # civitai | hf | file | family
    model_id: str | None
    version_id: str | None
    name: str
    creator: str | None
    base_model: str | None
    family: str | None
    is_inpainting: bool
    version_name: str | None = None


@dataclass
class Candidate:
    model_id: str
    name: str
    creator: str | None
    family: str | None
    score: float  # how well the name matches the query, 0-100
    downloads: int = 0  # at the source: listed best match first, popularity breaking near ties


@dataclass
class LookupResult:
    query: str
    match: Match | None
    candidates: list[Candidate] = field(default_factory=list)
    recommendation: ladder.Recommendation | None = None
    alternatives: list[ladder.Recommendation] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # a local file's UNet against its family's official base, where both were at hand (docs/routes.md)
    distance: BaseDistance | None = None

    @property
    def answered(self) -> bool:
        return self.recommendation is not None


def _bare() -> facts.Facts:
    """What the ladder weighs for an answer the registry has nothing to add to: where the sites are."""
    return facts.Facts(sites=settings.current().sites)


def _family_match(fam: dict, query: str) -> LookupResult:
    match = Match("family", None, None, fam["name"], None, None, fam["id"], False)
    subject = ladder.Subject(name=f"your {fam['name']} model", family=fam["id"], asked=query)
    rec, alts, warns = ladder.recommend(subject, _bare())
    return LookupResult(query, match, [], rec, alts, warns)


def _official_inpaint_repo(repo: str) -> LookupResult | None:
    """An official inpainting mirror from data/: answered offline, whatever the registry holds."""
    for fam in families.all_families():
        spec = fam.get("inpaint") or {}
        if any(m["repo"].lower() == repo.lower() for m in spec.get("mirrors", [])):
            return _official_inpaint(fam, spec, repo)
    return None


def _official_inpaint(fam: dict, spec: dict, query: str) -> LookupResult:
    repo = next((m["repo"] for m in spec["mirrors"] if m["repo"].lower() == query.lower()),
                next((m["repo"] for m in spec["mirrors"] if m.get("alive")), spec["mirrors"][0]["repo"]))  # fmt: skip
    match = Match("hf", f"hf:{repo}", None, repo, repo.split("/")[0], None, fam["id"], True)
    why = f"the official {fam['name']} inpainting checkpoint"
    subject = ladder.Subject(name=repo, family=fam["id"], is_inpainting=True, inpaint_evidence=[why])
    rec, alts, warns = ladder.recommend(subject, _bare())
    asked: dict = next((m for m in spec["mirrors"] if m["repo"] == repo), {})
    live = next((m["repo"] for m in spec["mirrors"] if m.get("alive")), None)
    if asked.get("alive") is False and live:
        warns.insert(0, f"{repo} was deleted from the Hub: the same checkpoint is at {live}.")
    return LookupResult(query, match, [], rec, alts, warns)


def _official_file(query: str) -> LookupResult | None:
    """An official checkpoint by its file name: the inpainting model itself, or the base's family."""
    found = families.official_file(query)
    if found is None:
        return None
    fam, role = found
    if role == "inpaint":
        return _official_inpaint(fam, fam["inpaint"], query)
    result = _family_match(fam, query)
    result.notes.append(f"{shown(query)} is the official {fam['name']} base checkpoint")
    return result


def _beyond(q: Query, name: str) -> str:
    """The words of a name query that are not the model's own name: what they ask of its versions ("Juggernaut XL
    Lightning"). A model called "Turbo Vision XL" asks for no Turbo version, and a URL or id for none at all."""
    if q.kind != "text":
        return ""
    own = set(re.findall(r"[a-z0-9]+", name.lower()))
    return " ".join(w for w in re.findall(r"[a-z0-9]+", q.raw.lower()) if w not in own)


def _answer(reg: Reader, model: ModelRecord, q: Query, version_id: str | None = None,
            distance: BaseDistance | None = None) -> LookupResult:  # fmt: skip
    versions = reg.versions(model.id)
    version = ladder.choose_version(versions, version_id or q.version_id, _beyond(q, model.name))
    family = (version.family if version else None) or model.family
    base = (version.base_model if version else None) or model.base_model
    inpainting = version.is_inpainting if version else model.is_inpainting
    source = sources.get(model.source)
    display = source.display_name(model, None)
    b_file = source.local_name(model, version)
    match = Match(model.source, model.id, version.id if version else None, display, model.creator, base, family,
                  inpainting, version.name if version else None)  # fmt: skip
    evidence = version.evidence if version else []
    twins = reg.same_files(model.id)
    notes = []
    for other_model, other_version, sha in twins:
        other = reg.model(other_model)
        if other is None:
            continue
        notes.append(f"the same file as {other.source} model {other.name} ({other.id}, sha256 {sha[:12]}…)")
        if family is None and other.family:  # what one source knows applies to the other
            family = match.family = other.family
        twin_version = next((v for v in reg.versions(other.id) if v.id == other_version), None)
        if twin_version and twin_version.is_inpainting and not inpainting:
            inpainting = match.is_inpainting = True
            evidence = [*evidence, f"{other.source} marks the same file as inpainting", *twin_version.evidence]
    subject = ladder.Subject(
        name=source.display_name(model, version), family=family,
        base_model=base, is_inpainting=inpainting, model_id=model.id, version_id=version.id if version else None,
        version_name=version.name if version else None, versions=versions,
        file=b_file, inpaint_evidence=evidence,
        same_file_models=[t[0] for t in twins], same_file_versions=[t[1] for t in twins], tags=reg.tags(model.id),
        distance=distance,
    )  # fmt: skip
    known = facts.gather(model.id, subject.version_id, subject.same_file_models, reg, settings.current().sites)
    rec, alts, warns = ladder.recommend(subject, known)
    if family is None and base and families.civitai_base_model(base) is None:
        warns.insert(0, f'Base model "{base}" is not in the bundled data yet (stored as-is).')
    return LookupResult(q.raw, match, [], rec, alts, warns, notes)


def _file_answer(q: Query, reg: Reader | None) -> LookupResult:
    from merge.hashing import cached

    assert q.path is not None  # a "file" query (parse_query) has its path
    hashes = cached(q.path) if reg is not None and q.path.is_file() else None
    return answer_for_file(q, probe(q.path), reg, hashes.sha256 if hashes else None)


def answer_for_file(q: Query | str | Path, p, reg: Reader | None, sha256: str | None = None) -> LookupResult:
    """The answer for a local file already probed (``p``: a ProbeResult) and maybe hashed: the registry's
    model when it knows the file's SHA256, else the ladder for its family. For callers that ask about many
    files (scan) with one open registry."""
    if not isinstance(q, Query):
        q = parse_query(str(q))
    path = q.path
    if path is None:
        raise QueryError(f"not a local file or folder: {shown(q.raw)}")
    is_inpaint = p.variant in ("inpaint", "fill")
    distance = None if is_inpaint or p.media != "image" else measure(path, p.family)
    if reg is not None and sha256 and (hit := reg.by_hash(sha256, "sha256")) and (model := reg.model(hit[0])):
        result = _answer(reg, model, q, hit[1], distance)
        result.notes.append(f"{path.name} is this registry file (sha256 {sha256[:12]}…)")
        result.distance = distance
        return result
    match = Match("file", None, None, path.name, None, None, p.family, is_inpaint)
    subject = ladder.Subject(
        name=path.name,
        family=p.family,
        is_inpainting=is_inpaint,
        file=str(path) + ("/" if path.is_dir() else ""),
        local=True,
        prediction=p.markers,
        inpaint_evidence=[f"UNet takes {p.in_channels} input channels"] if is_inpaint else [],
        distance=distance,
    )
    rec, alts, warns = ladder.recommend(subject, _bare())
    result = LookupResult(q.raw, match, [], rec, alts, warns, distance=distance)
    result.notes.append(f"classified from tensor shapes: {p.family or 'unknown'} {p.variant}, {p.dtype}, "
                        f"{p.params / 1e9:.2f} B parameters")  # fmt: skip
    return result


def _asked(q: Query) -> sources.Source:
    """The source a live lookup asks: the one whose id the query is, else the first that searches names and
    hashes."""
    return sources.get(q.kind) if q.kind in sources.NAMES else sources.searching()[0]


def _fetch(q: Query, db: str | None, urls: dict[str, str | None]) -> "Trouble | None":
    """Ask the query's source and store its answer; returns what went wrong (one line, and its code), or None."""
    from crawler.http import CrawlError, Unavailable

    source = _asked(q)
    if q.kind in sources.NAMES:
        ref = sources.Ref(model=q.repo or q.model_id, version=q.version_id)
    else:
        ref = sources.Ref(file_hash=q.hash, text=q.raw if q.kind == "text" else None)
    url = urls.get(source.name)
    try:
        source.fetch_one(lambda: registry.open(db), ref, url=url)
    except Unavailable as exc:
        return Trouble(f"{exc.what} is not on {source.label} ({exc.reason})", "not-found")
    except CrawlError as exc:
        return _unanswered(source.endpoint(url), exc, source.token_variable)
    return None


@dataclass
class Trouble:
    """Why a live lookup got no model: ``code`` not-found (the source says there is none), or why it could not
    say (no-access, http-error, network)."""

    message: str
    code: str

    def __str__(self) -> str:
        return self.message


def _unanswered(where: str, exc: Exception, token: str) -> Trouble:
    """Why a live lookup got no answer, in one line: a server that refused us is not a network that is down."""
    from crawler.http import ApiError, BadSetting

    if isinstance(exc, BadSetting):  # a URL or certificate store set by hand: no request could be made
        return Trouble(f"{exc}; answering from bundled data", exc.code)
    if isinstance(exc, ApiError) and exc.status in (401, 403):
        return Trouble(f"{where} refused the lookup ({exc}): {token} may need to be set to a key with access; "
                       "answering from bundled data", "no-access")  # fmt: skip
    if isinstance(exc, ApiError):
        return Trouble(f"{where} answered {exc}; answering from bundled data", "http-error")
    return Trouble(f"offline: could not reach {where} ({exc}); answering from bundled data", "network")


class NotFound(InpaintAdvisorError, LookupError):
    """The query names something precise (an id, a version, a repo, a file hash) that is not there: not in the
    registry, and its source says there is none or was not asked (``code`` not-found), or could not be asked
    (``code`` network, no-access, http-error: the message says why)."""

    code = "not-found"


@contextlib.contextmanager
def _scratch_registry():
    """Where a live answer is stored when there is no registry to store it in: a lookup never creates one."""
    from crawler.registry import forget

    with tempfile.TemporaryDirectory(prefix="inpaint-advisor-") as tmp:
        path = str(Path(tmp) / "registry.db")
        try:
            yield path
        finally:
            forget(path)


def _where(db: str | None) -> str:
    return registry.locate(db).display


def lookup(raw: str, *, db: str | None = None, offline: bool = False, civitai_url: str | None = None) -> LookupResult:
    """Resolve ``raw`` and recommend. Raises QueryError (a ValueError) for a query that cannot be read,
    NotFound for a precise reference to nothing, CheckpointError for a local file that is not a checkpoint,
    RegistryError for a registry that cannot be read."""
    q = parse_query(raw)
    if q.kind == "file":
        reg = registry.open_reader_if_any(db)
        try:
            return _file_answer(q, reg)
        finally:
            if reg is not None:
                reg.close()
    if q.kind == "text" and (fam := families.family_by_name(q.raw)):
        return _family_match(fam, raw)
    if q.kind == "text" and (official := _official_file(q.raw)):
        return official
    if q.kind == "hf":
        assert q.repo is not None  # an "hf" query (parse_query) names its repo
        fam = families.family(families.family_for_hf_repo(q.repo))
        if fam:
            return _family_match(fam, raw)
        if official := _official_inpaint_repo(q.repo):
            return official
    with contextlib.ExitStack() as stack:
        reg = registry.open_reader_if_any(db)
        if reg is not None:
            stack.callback(lambda: reg.close())
        notes: list[str] = []
        trouble = None
        if reg is None:
            notes.append(f"no registry at {_where(db)} yet: answering from bundled data and live lookups; fill "
                         "one with `inpaint-advisor crawl civitai`")  # fmt: skip
        elif reg.is_empty():
            notes.append(f"the registry at {_where(db)} is empty: fill it with `inpaint-advisor crawl civitai`")
        found, miss = _resolved(reg, q, None)
        problem = _version_problem(reg, q, found)
        # weak look-alikes are no answer while the source may have the model itself: it is asked first
        weak = isinstance(found, list) and all(m.score < match.FLOOR for m in found)
        if (found is None or problem or weak) and q.kind in (*sources.NAMES, "hash", "text"):
            if offline:
                notes.append(f"offline: {_asked(q).label} was not asked")
            else:
                fetch = functools.partial(_fetch, q, urls={"civitai": civitai_url})
                store, unstored = db, "there is no registry to store it in"
                if reg is None:
                    store = stack.enter_context(_scratch_registry())
                try:
                    trouble = fetch(store)
                except Exception as exc:  # the registry can be read but not written (a read-only medium, ...)
                    error = registry.describe_error(exc, store)
                    if error is None or reg is None:
                        raise
                    store, unstored = stack.enter_context(_scratch_registry()), f"the registry: {error}"
                    trouble = fetch(store)
                if trouble:
                    notes.append(str(trouble))
                else:
                    if store != db:
                        notes.append(f"fetched live and not stored ({unstored})")
                    fresh = registry.open_reader_if_any(store)
                    if fresh is not None:
                        stack.callback(fresh.close)
                        reg = fresh
                    found, miss = _resolved(reg, q, miss)
                    problem = _version_problem(reg, q, found)
        if problem:
            raise NotFound(problem)
        if isinstance(found, list):
            listed = [Candidate(m.id, m.name, m.creator, m.family, round(m.score, 1), m.downloads) for m in found]
            listed.sort(key=lambda c: (-c.score, -c.downloads))  # as the table shows them: by score
            if len(listed) == 1:  # one weak look-alike is a question, not a choice
                ask = f"did you mean {listed[0].name} ({listed[0].model_id})? Look it up by id to get its answer"
            else:
                ask = "several models match: be more specific, or look one up by id"
            return LookupResult(raw, None, listed, notes=[*notes, ask])
        if found is None:
            what = f"{q.repo} is not in the registry" if q.kind == "hf" else f"no model matched “{shown(raw)}”"
            what += f": {miss.note}" if miss else ""
            if q.kind != "text":  # a precise reference to nothing: one rule, an error (a name is a search)
                if trouble:  # bundled data does not answer for an id or a hash
                    raise NotFound(str(trouble).removesuffix("; answering from bundled data"), trouble.code)
                missing = f"{shown(raw)} is not in the registry" + (f": {miss.note}" if miss else "")
                raise NotFound("; ".join([missing, *notes[::-1]]))
            return LookupResult(raw, None, notes=notes if trouble else [*notes, what])  # the trouble says why
        model, version_id = found
        result = _answer(reg, model, q, version_id)
        result.notes = notes + result.notes
        return result


def _version_problem(reg: Reader | None, q: Query, found) -> str | None:
    """Why ``civitai:ID@VERSION`` names nothing: a version of another model, or none at all."""
    if reg is None or q.kind != "civitai" or not (q.model_id and q.version_id) or not isinstance(found, tuple):
        return None
    model, version_id = found
    if any(v.id == version_id for v in reg.versions(model.id)):
        return None
    owner = reg.model_of_version(version_id)
    if owner is not None:
        return (f"version {q.version_id} belongs to {owner.name} ({owner.id}), not to {model.name} ({model.id}): "
                f"look it up as civitai:{owner.source_id}@{q.version_id}")  # fmt: skip
    return f"{model.name} ({model.id}) has no version {q.version_id}"


def _resolved(reg: Reader | None, q: Query, miss: "FamilyMiss | None"):
    """(what ``_resolve`` found, or None for a family miss; the miss, else the one known before)."""
    found = _resolve(reg, q)
    return (None, found) if isinstance(found, FamilyMiss) else (found, miss)


def _resolve(reg: Reader | None, q: Query):
    """(model, version id) | [candidates] | None"""
    if reg is None:
        return None
    if q.kind == "civitai":
        if q.model_id:
            model = reg.model(f"civitai:{q.model_id}")
            version_id = f"civitai:v{q.version_id}" if q.version_id else None
            return (model, version_id) if model else None
        model = reg.model_of_version(f"civitai:v{q.version_id}")
        return (model, f"civitai:v{q.version_id}") if model else None
    if q.kind == "hf":
        model = reg.model(f"hf:{q.repo}")
        return (model, None) if model else None
    if q.kind == "hash":
        assert q.hash is not None and q.hash_kind is not None  # a "hash" query (parse_query) has both
        hit = reg.by_hash(q.hash, q.hash_kind)
        return (reg.model(hit[0]), hit[1]) if hit else None
    if q.kind == "text":
        return _by_name(reg, q)
    return None


def _by_name(reg: Reader, q: Query):
    """A file name the registry knows, the one model of that exact name (or clearly the most downloaded of
    several), or the best-scored candidates (``advisor.advice.match``)."""
    if q.raw.strip().lower().endswith(CHECKPOINT_SUFFIXES) and (hits := reg.by_file_name(q.raw.strip())):
        model_id, version_id = hits[0]
        return reg.model(model_id), version_id
    wanted = normalize_name(q.raw)[:200]
    asked = families.asked_families(wanted.split())
    everything = reg.exact(q.raw)
    exact = [m for m in everything if _of_family(m, asked)]
    # an exact name needs no wider search: only its rivals in the cheap batches matter
    scored = _scored(reg, wanted, _candidates(reg, wanted, widen=not exact))
    # the family's words say the family, not the name or the version ("dreamshaper 7 sd15"): read without them
    # too, each candidate keeping its better reading ("autismmix pony" names the version "AutismMix_pony")
    plain = " ".join(families.without_family_words(wanted.split()))
    if plain != wanted:
        for mid, s in _scored(reg, plain, _candidates(reg, plain, widen=not exact)).items():
            was = scored.get(mid)  # a reading that found a version keeps it against one that found none
            if was is None or (s.similarity > was.similarity and (was.version is None or s.version is not None)):
                scored[mid] = s
    found = {mid: s for mid, s in scored.items() if _of_family(s.model, asked)}
    for s in found.values():  # "cyberrealistic sdxl" is CyberRealistic XL, not CyberRealistic Pony
        if _names_another_family(s.model, asked):
            s.similarity -= OTHER_FAMILY_NAMED
        elif _names_the_family(s.model, asked):  # "DreamShaper XL" for "dreamshaper sdxl": the rest compared
            s.similarity = max(s.similarity, _shared_family_aside(wanted, s.model))
    if asked and not exact and not _listable(found.values()) and (everything or _listable(scored.values())):
        return FamilyMiss(f"its look-alikes in the registry are of other families than “{' '.join(asked[0])}” "
                          "says")  # fmt: skip
    if exact and (len(exact) == 1 or exact[0].downloads >= match.POPULAR * (exact[1].downloads + 1)):
        # The exact name wins ("Dark Pony 123456" is a name, not "Dark Pony" version 123456), unless it is a
        # stranger's re-upload of a far more popular model named as well ("majicMIX realistic 麦橘写实", or
        # "DreamShaper XL" version "Turbo" for a stranger's "DreamShaper XL Turbo")
        top, named = exact[0], {m.id for m in exact}
        if not any(s.similarity >= match.EXACT_RIVAL and s.model.downloads >= match.POPULAR * (top.downloads + 1)
                   for s in found.values() if s.model.id not in named):  # fmt: skip
            return top, None
    found.update((m.id, match.Scored(m, 100.0)) for m in exact)
    # a re-upload of the best one (its name extended, far fewer downloads) is no rival of it either
    decided = match.decide(list(found.values()), lambda s: _family_of(reg, s.model) | {
        o.model.id for o in found.values() if _reupload_of(o.model, s.model)})  # fmt: skip
    if isinstance(decided, match.Scored):
        return decided.model, decided.version.id if decided.version else None
    return _listed(decided) if decided else None


def _listable(scores) -> bool:
    return any(s.similarity >= match.LIST_AT for s in scores)


@dataclass
class FamilyMiss:
    """A name query that names a family, whose look-alikes in the registry are all of other families."""

    note: str


def _of_family(model: ModelRecord, asked: tuple[list[str], set[str]] | None) -> bool:
    """Whether a candidate can be what a query that names a family asks for ("juggernaut xl v9" is no SD 1.5
    model): of an allowed family, of no known family, or holding the family's word in its own name."""
    if asked is None or model.family is None:
        return True
    words, allowed = asked
    own = set(model.name_norm.split()) if model.name_norm else set(normalize_name(model.name).split())
    return model.family in allowed or any(w in own for w in words)


def _name_words(model: ModelRecord) -> list[str]:
    return (model.name_norm or normalize_name(model.name)).split()


def _names_another_family(model: ModelRecord, asked: tuple[list[str], set[str]] | None) -> bool:
    """A candidate whose own name says a family the query's family words do not, nor one they descend from (a
    Pony variant, asked for SDXL): allowed, as Pony descends from SDXL, but not what the query names first.
    ("AutismMix SDXL" asked for as Pony says Pony's parent: no cost.)"""
    if asked is None:
        return False
    said = families.named_by(asked[0])
    ancestry = {f["id"] for fid in said for f in families.lineage(fid)}
    own = families.named_by(_name_words(model))
    return bool(own) and not own <= ancestry


def _shared_family_aside(wanted: str, model: ModelRecord) -> float:
    """How well the query names the model once the family words both say of one family are set aside on both
    sides ("dreamshaper sdxl" and "DreamShaper XL" are both "dreamshaper"); a family word only the query says
    still counts ("dreamshaper xl pony" is not DreamShaper XL)."""
    query = wanted.split()
    name = _name_words(model)
    shared = families.named_by(query) & families.named_by(name)
    query_rest = [w for w in query if not families.named_by([w]) & shared] or query
    name_rest = [w for w in name if not families.named_by([w]) & shared] or name
    return match.name_similarity(" ".join(query_rest), " ".join(name_rest))


def _names_the_family(model: ModelRecord, asked: tuple[list[str], set[str]] | None) -> bool:
    """A candidate whose own name says a family the query's family words say (or one they descend from)."""
    if asked is None:
        return False
    said = families.named_by(asked[0])
    own = families.named_by(_name_words(model))
    return bool(own & {f["id"] for fid in said for f in families.lineage(fid)})


def _candidates(reg: Reader, wanted: str, *, widen: bool = True) -> dict:
    """The first batch of candidates for the query, the cheapest for each of its shorter name parts
    ("juggernaut xl" of "juggernaut xl v9"), then wider batches of the whole query until one holds a good
    enough name."""
    found: dict = {}
    whole = reg.name_candidates(wanted)
    for batch in whole:
        found.update((m.id, m) for m in batch)
        if batch:
            break
    for part in match.name_parts(wanted)[1:]:  # the cheapest batch only: names holding the part
        found.update((m.id, m) for m in next(reg.name_candidates(part), []))
    if widen and not any(match.name_similarity(wanted, m.name_norm) >= GOOD_ENOUGH for m in found.values()):
        for batch in whole:
            found.update((m.id, m) for m in batch)
            if any(match.name_similarity(wanted, m.name_norm) >= GOOD_ENOUGH for m in batch):
                break
    return found


def _scored(reg: Reader, wanted: str, models: dict) -> dict:
    versions = reg.version_names(list(models)) if " " in wanted else {}
    return {mid: match.score(wanted, m, [match.VersionName(*v) for v in versions.get(mid, [])])
            for mid, m in models.items()}  # fmt: skip


LISTED = 8  # candidates shown when none is clearly meant


def _listed(scored: list) -> list[ModelRecord]:
    """The best ranked candidates, less the re-uploads of one listed already: a stranger's name that holds a
    listed model's ("majicMIX lux XL 12546" of "majicMIX lux") with far fewer downloads is not another choice."""
    out: list[ModelRecord] = []
    for s in scored:
        if len(out) == LISTED:
            break
        if any(_reupload_of(s.model, kept) for kept in out):
            continue
        s.model.score = s.similarity
        out.append(s.model)
    return out


def _reupload_of(model: ModelRecord, original: ModelRecord) -> bool:
    """A stranger's model named after ``original`` (its name whole, extended or prefixed: "My majicMIX lux 7")
    with a tenth of its downloads or fewer.
    The creator's own "majicMIX lux XL" is a model of its own, whatever its downloads."""
    if model.creator is not None and model.creator == original.creator:
        return False
    core = match.name_variants(original.name_norm)[1]  # its Latin name, without an alias in another script
    holds = f" {core} " in f" {model.name_norm} " or core.replace(" ", "") in model.name_norm.split()[:1]
    return holds and original.downloads >= match.POPULAR * (model.downloads + 1)


def _family_of(reg: Reader, model: ModelRecord) -> set[str]:
    """The model and its linked inpainting models: not rivals for the match."""
    return {model.id} | {ln.inpaint_model_id for ln in reg.links_to(model.id)}
