"""`lookup`: resolve whatever the user pasted to a model, then run the recommendation ladder.

Registry first; a Civitai model, hash or name that is not there is fetched live and stored (unless offline;
with no registry yet, into a scratch one: a lookup never creates a registry); without a network, the bundled
data still answers for families, official checkpoints and local files.
"""

import contextlib
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from advisor import ladder
from advisor.probe import probe
from advisor.query import Query, parse_query, shown
from crawler import families, registry
from crawler.names import normalize_name
from crawler.registry.reader import ModelRecord, Reader

# A free-text match is taken as the answer when it is good and clearly ahead of the next model (its own
# inpainting siblings aside): (score, lead) pairs, either suffices. Otherwise candidates are listed.
ACCEPT = ((86.0, 6.0), (75.0, 20.0))


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
    score: float


@dataclass
class LookupResult:
    query: str
    match: Match | None
    candidates: list[Candidate] = field(default_factory=list)
    recommendation: ladder.Recommendation | None = None
    alternatives: list[ladder.Recommendation] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def answered(self) -> bool:
        return self.recommendation is not None


def _family_by_text(text: str) -> dict | None:
    """ "SDXL 1.0", "sd 1.5", "Pony", "flux.1 d", "sdxl": a base model, not a fine-tune."""
    key = normalize_name(text)
    for fam in families.all_families():
        names = [fam["id"], fam["name"], *fam["civitai_base_models"], *fam["hf_base_repos"]]
        if any(normalize_name(n) == key for n in names):
            return fam
    return None


def _family_match(fam: dict, query: str) -> LookupResult:
    match = Match("family", None, None, fam["name"], None, None, fam["id"], False)
    rec, alts, warns = ladder.recommend(ladder.Subject(name=f"your {fam['name']} model", family=fam["id"]))
    return LookupResult(query, match, [], rec, alts, warns)


def _official_inpaint_repo(repo: str) -> LookupResult | None:
    """An official inpainting mirror from data/: answered offline, whatever the registry holds."""
    for fam in families.all_families():
        spec = fam.get("inpaint") or {}
        if any(m["repo"].lower() == repo.lower() for m in spec.get("mirrors", [])):
            match = Match("hf", f"hf:{repo}", None, repo, repo.split("/")[0], None, fam["id"], True)
            why = f"the official {fam['name']} inpainting checkpoint"
            subject = ladder.Subject(name=repo, family=fam["id"], is_inpainting=True, inpaint_evidence=[why])
            rec, alts, warns = ladder.recommend(subject)
            return LookupResult(repo, match, [], rec, alts, warns)
    return None


def _answer(reg: Reader, model: ModelRecord, q: Query, version_id: str | None = None) -> LookupResult:
    versions = reg.versions(model.id)
    version = ladder.choose_version(versions, version_id or q.version_id, q.version_hint)
    family = (version.family if version else None) or model.family
    base = (version.base_model if version else None) or model.base_model
    inpainting = version.is_inpainting if version else model.is_inpainting
    display = model.name if model.source != "hf" else model.source_id  # "author/repo" is how Hub users say it
    b_file = version.primary_file if version else None
    if model.source == "hf" and (b_file is None or "/" in b_file):
        b_file = model.source_id.split("/", 1)[1] + "/"  # a diffusers repo: merge reads the downloaded folder
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
        name=display + (f" {version.name}" if version and model.source != "hf" else ""), family=family,
        base_model=base, is_inpainting=inpainting, model_id=model.id, version_id=version.id if version else None,
        version_name=version.name if version else None, versions=versions,
        file=b_file, inpaint_evidence=evidence,
        same_file_models=[t[0] for t in twins], same_file_versions=[t[1] for t in twins],
    )  # fmt: skip
    rec, alts, warns = ladder.recommend(subject, reg)
    if family is None and base:
        warns.insert(0, f'Base model "{base}" is not in the bundled data yet (stored as-is).')
    return LookupResult(q.raw, match, [], rec, alts, warns, notes)


def _file_answer(q: Query, reg: Reader | None) -> LookupResult:
    from merge.hashing import cached

    hashes = cached(q.path) if reg is not None and q.path.is_file() else None
    return answer_for_file(q, probe(q.path), reg, hashes.sha256 if hashes else None)


def answer_for_file(q: Query | str | Path, p, reg: Reader | None, sha256: str | None = None) -> LookupResult:
    """The answer for a local file already probed (``p``: a ProbeResult) and maybe hashed: the registry's
    model when it knows the file's SHA256, else the ladder for its family. For callers that ask about many
    files (scan) with one open registry."""
    if not isinstance(q, Query):
        q = parse_query(str(q))
    if reg is not None and sha256 and (hit := reg.by_hash(sha256, "sha256")):
        result = _answer(reg, reg.model(hit[0]), q, hit[1])
        result.notes.append(f"{q.path.name} is this registry file (sha256 {sha256[:12]}…)")
        return result
    is_inpaint = p.variant in ("inpaint", "fill")
    match = Match("file", None, None, q.path.name, None, None, p.family, is_inpaint)
    subject = ladder.Subject(
        name=q.path.name,
        family=p.family,
        is_inpainting=is_inpaint,
        file=str(q.path) + ("/" if q.path.is_dir() else ""),
        local=True,
        prediction=p.markers,
        inpaint_evidence=[f"UNet takes {p.in_channels} input channels"] if is_inpaint else [],
    )
    rec, alts, warns = ladder.recommend(subject)
    result = LookupResult(q.raw, match, [], rec, alts, warns)
    result.notes.append(f"classified from tensor shapes: {p.family or 'unknown'} {p.variant}, {p.dtype}, "
                        f"{p.params / 1e9:.2f} B parameters")  # fmt: skip
    return result


def _fetch(q: Query, db: str | None, base_url: str | None) -> str | None:
    """Look the model up on Civitai and store it; returns a problem to report in one line, or None."""
    from crawler import civitai
    from crawler.http import CrawlError

    try:
        if q.kind == "civitai":
            items = civitai.fetch_items(model_id=q.model_id, version_id=q.version_id, base_url=base_url)
        elif q.kind == "hash":
            items = civitai.fetch_items(file_hash=q.hash, base_url=base_url)
        else:
            items = civitai.fetch_items(text=q.raw, base_url=base_url)
    except CrawlError as exc:
        return f"offline: could not reach {civitai.api_url(base_url)} ({exc}); answering from bundled data"
    if items:
        civitai.store_page(registry.connect(db), items, None, None)
    return None


def _fetch_hf(q: Query, db: str | None) -> str | None:
    """Ask the Hub about one repo and store it; returns a problem to report in one line, or None."""
    from crawler import hf
    from crawler.http import CrawlError, RetryPolicy
    from crawler.hub import RepoUnavailable, endpoint_from_env

    try:
        hf.fetch_one(registry.connect(db), q.repo, policy=RetryPolicy(attempts=2, base_delay=0.5, max_delay=2.0))
    except RepoUnavailable as exc:
        return f"{q.repo} is not on the Hugging Face Hub ({exc.reason})"
    except CrawlError as exc:
        return f"offline: could not reach {endpoint_from_env()} ({exc}); answering from bundled data"
    return None


class NotFound(LookupError):
    """The query names something precise that does not exist (a version that is not the model's)."""


@contextlib.contextmanager
def _scratch_registry():
    """Where a live answer is stored when there is no registry to store it in: a lookup never creates one."""
    from crawler.registry.engine import forget

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
    if q.kind == "text" and (fam := _family_by_text(q.raw)):
        return _family_match(fam, raw)
    if q.kind == "hf":
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
        found = _resolve(reg, q)
        problem = _version_problem(reg, q, found)
        if (found is None or problem) and q.kind in ("civitai", "hash", "text", "hf"):
            if offline:
                notes.append("offline: " + ("the Hugging Face Hub" if q.kind == "hf" else "Civitai")
                             + " was not asked")  # fmt: skip
            else:
                fetch = (lambda where: _fetch_hf(q, where)) if q.kind == "hf" else \
                    (lambda where: _fetch(q, where, civitai_url))  # fmt: skip
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
                    notes.append(trouble)
                else:
                    if store != db:
                        notes.append(f"fetched live and not stored ({unstored})")
                    fresh = registry.open_reader_if_any(store)
                    if fresh is not None:
                        stack.callback(fresh.close)
                        reg = fresh
                    found = _resolve(reg, q)
                    problem = _version_problem(reg, q, found)
        if problem:
            raise NotFound(problem)
        if isinstance(found, list):
            return LookupResult(raw, None, [Candidate(m.id, m.name, m.creator, m.family, round(m.score, 1))
                                            for m in found], notes=notes + ["several models match: be more specific, "
                                                                           "or look one up by id"])  # fmt: skip
        if found is None:
            what = f"{q.repo} is not in the registry" if q.kind == "hf" else f"no model matched “{shown(raw)}”"
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
        hit = reg.by_hash(q.hash, q.hash_kind)
        return (reg.model(hit[0]), hit[1]) if hit else None
    if q.kind == "text":
        if (exact := reg.exact(q.raw)) is not None:  # "Dark Pony 123456" is a name, not "Dark Pony" version 123456
            q.version_hint = None
            return exact, None
        ranked = reg.search(q.text or q.raw, limit=8)
        if q.version_hint and not _clear_winner(reg, ranked):
            # "dreamshaper 8" may also be a name that ends in a number
            ranked = sorted({m.id: m for m in ranked + reg.search(q.raw, limit=8)}.values(), key=lambda m: -m.score)
        if not ranked:
            return None
        if _clear_winner(reg, ranked):
            return ranked[0], None
        return [m for m in ranked if m.score >= 50] or None
    return None


def _clear_winner(reg: Reader, ranked: list[ModelRecord]) -> bool:
    if not ranked:
        return False
    top = ranked[0]
    runner_up = next((m for m in ranked[1:] if m.id not in _family_of(reg, top)), None)
    lead = top.score - (runner_up.score if runner_up else 0.0)
    return any(top.score >= score and lead >= margin for score, margin in ACCEPT)


def _family_of(reg: Reader, model: ModelRecord) -> set[str]:
    """The model and its linked inpainting models: not rivals for the match."""
    return {model.id} | {ln.inpaint_model_id for ln in reg.links_to(model.id)}
