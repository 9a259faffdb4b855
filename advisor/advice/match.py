"""Which model, and which of its versions, a typed name means.

The registry's trigram indexes hand over a few hundred candidate names; this module scores them the way a
careful reader would:

- a name is compared whole, without its spaces ("juggernautxl") and without what only decorates it: a non-Latin
  alias ("majicMIX realistic 麦橘写实") or a trailing version label ("Realistic Vision V6.0 B1");
- words at the end of the query may name a version ("dreamshaper 8", "... v5.1 inpainting", "epicrealism pure
  evolution"): each split of the query into a name and a version is tried against the candidate's versions;
- look-alikes are the rule on Civitai (re-uploads under the same name, "X Mix", "X Pony"): between names about
  as close, the one downloaded far more often is meant; a model is answered only when it is clearly ahead,
  otherwise the close ones are listed.
"""

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rapidfuzz import fuzz

from crawler import families
from crawler.registry import normalize_name

if TYPE_CHECKING:
    from crawler.registry import ModelRecord

ANSWER_AT = 86.0  # similarity a name needs to be answered when a rival is within MARGIN
MARGIN = 6.0  # a lead this large answers by itself ...
WIDE_MARGIN = 20.0  # ... or this large, for a weaker match (>= FLOOR)
FLOOR = 75.0
NEAR = 5.0  # a rival closer than this (or even closer by up to this) is beaten only by popularity:
POPULAR = 10  # this many times its downloads
EXACT_RIVAL = 97.0  # a far more popular model named this well outranks a stranger's model of the exact name
LIST_AT = 50.0  # candidates listed when none is clearly meant
POPULARITY_WEIGHT = 2.5  # ranking only: similarity + weight * log10(downloads)
MAX_VERSION_WORDS = 4
INPAINT_WORDS = {"inpainting", "inpaint", "inp", "inpaintng"}
# Words that make a version a variant a query must ask for: "v9" is "v9 + RunDiffusionPhoto 2", not "V9 Lightning"
VARIANT_WORDS = INPAINT_WORDS | {"lightning", "turbo", "hyper", "lcm", "dmd", "refiner", "dpo", "distilled"}
_VERSION_TOKEN = re.compile(r"^(?:v?\d+[a-z]?\d*|b\d+)$")
_V_NUMBER = re.compile(r"^v(\d.*)$")


@dataclass
class VersionName:
    id: str
    name: str
    is_inpainting: bool
    position: int


@dataclass
class Scored:
    model: "ModelRecord"  # (id, name, name_norm, downloads, is_inpainting are what is read)
    similarity: float
    version: VersionName | None = None

    @property
    def rank(self) -> float:
        return self.similarity + POPULARITY_WEIGHT * math.log10(1 + _downloads(self))


def _downloads(s: Scored) -> int:
    return getattr(s.model, "downloads", 0) or 0


def _compact(text: str) -> str:
    return text.replace(" ", "")


def name_variants(name_norm: str) -> list[str]:
    """The normalised name, without non-Latin tokens, its non-Latin tokens alone, and (last) without a trailing
    version label."""
    tokens = name_norm.split()
    latin = [t for t in tokens if t.isascii()] or tokens
    core = list(latin)
    while len(core) > 1 and _VERSION_TOKEN.match(core[-1]):
        core.pop()
    alias = [t for t in tokens if not t.isascii()] or tokens  # "麦橘写实" names majicMIX realistic too
    return [" ".join(v) for v in (tokens, latin, alias, core)]


def name_similarity(query: str, name_norm: str) -> float:
    """0-100: how well the normalised ``query`` names ``name_norm``. A query that is the start of the name scores
    85-95 (more for covering more of it): "majicmix" is each of majicMIX realistic, lux and fantasy."""
    q_compact = _compact(query)
    variants = name_variants(name_norm)
    words = query.split()
    if words and _VERSION_TOKEN.match(words[-1]):
        variants = variants[:3]  # a query that ends in a version is not "the name, version aside" of another one
    best = 0.0
    for variant in dict.fromkeys(variants):
        v_compact = _compact(variant)
        best = max(best, fuzz.ratio(query, variant), fuzz.ratio(q_compact, v_compact),
                   fuzz.token_sort_ratio(query, variant))  # fmt: skip
        if len(q_compact) >= 4 and v_compact.startswith(q_compact):
            best = max(best, 85.0 + 10.0 * len(q_compact) / len(v_compact))
        if len(words) >= 2 and _in_order(words, variant.split()):  # "wai ponyxl": WAI-ANI-NSFW-PONYXL
            best = max(best, 80.0 + 15.0 * len(q_compact) / len(v_compact))
        elif len(words) == 1 and len(q_compact) == 3 and variant.split()[:1] == words:  # "wai": WAI-NSFW-...
            best = max(best, min(FLOOR - 1.0, 70.0 + 10.0 * len(q_compact) / len(v_compact)))  # listed, never answered
    return best


def _in_order(words: list[str], name: list[str]) -> bool:
    """Every word of the query is a word of the name, in the name's order, the first one first."""
    if not name or words[0] != name[0]:
        return False
    rest = iter(name[1:])
    return all(w in rest for w in words[1:])


def _label(tokens: Iterable[str]) -> list[str]:
    """Version tokens as compared: "v8" is "8", every inpainting spelling one word."""
    out = []
    for t in tokens:
        if t in INPAINT_WORDS:
            t = "inpainting"
        elif m := _V_NUMBER.match(t):
            t = m[1]
        out.append(t)
    return out


def version_similarity(words: list[str], version_name: str) -> float | None:
    """How well the query's trailing ``words`` name a version; None when they do not."""
    asked = _label(words)
    have = _label(normalize_name(version_name).split())
    if not have:
        return None
    extra = [t for t in have if t not in asked]
    cost = sum(8.0 if t in VARIANT_WORDS else 0.5 for t in extra)
    if any(t in VARIANT_WORDS and t not in have for t in asked):
        return None  # "8 inpainting" is not version "8"
    if asked == have:
        return 100.0
    if have[: len(asked)] == asked:
        return 97.0 - cost
    a, h = "".join(asked), "".join(have)
    if len(a) >= 3 and h.startswith(a):  # "vpred" names "V-Pred-1.0-Version"
        return 95.0 - cost
    it = iter(have)
    if all(t in it for t in asked):  # "v10" names "Meina V10", "confetti" "AutismMix_confetti"
        return 92.0 - cost
    ratio = fuzz.ratio(" ".join(asked), " ".join(have))
    return ratio - cost if ratio >= 85 else None


def best_version(words: list[str], versions: list[VersionName]) -> tuple[float, VersionName] | None:
    scored = [(s, v) for v in versions if (s := version_similarity(words, v.name)) is not None]
    if not scored:
        return None
    return max(scored, key=lambda sv: (sv[0], -sv[1].position))


NUMBER_AGREES = 8.0  # a name holding every number the query says ("photon mix 5": "Photon Mix V5/Pruned") ...
NUMBER_DIFFERS = 25.0  # ... and one whose numbers are all others ("Photon Mix V3"): look-alikes told apart
_NUMBER = re.compile(r"^\d{1,3}(?:[a-z]\d*)?$")  # a version's number; a year (2024) says nothing of one


def _numbers(text: str) -> set[str]:
    """The version numbers a text says ("v5" is 5), not those of a base model's spelling ("sd 1.5")."""
    return {t for t in _label(families.without_family_words(text.split())) if _NUMBER.match(t)}


def _by_number(query: str, name_norm: str, similarity: float) -> float:
    """Names that differ by a number are told apart by the number the query says (when it says one and the name
    has one: a number the name lacks is left to its versions)."""
    asked, has = _numbers(query), _numbers(name_norm)
    if not asked or not has:
        return similarity
    if asked <= has:
        return min(100.0, similarity + NUMBER_AGREES)
    return similarity - NUMBER_DIFFERS if not asked & has else similarity


def score(query: str, model, versions: list[VersionName]) -> Scored:
    """The candidate's similarity to ``query``: the whole query against its name (its numbers agreeing or not),
    or the best split into a name and a version of its own (the version's imperfection costs a little)."""
    best = Scored(model, _by_number(query, model.name_norm, name_similarity(query, model.name_norm)))
    words = query.split()
    for k in range(len(words) - 1, max(0, len(words) - MAX_VERSION_WORDS) - 1, -1):
        part = " ".join(words[:k])
        if len(_compact(part)) < 3:
            break
        named = name_similarity(part, model.name_norm)
        if named < LIST_AT or named <= best.similarity:  # no version can lift it above what it has
            continue
        found = best_version(words[k:], versions)
        if found is None:
            continue
        similarity = named - (100.0 - found[0]) / 4
        if similarity > best.similarity:
            best = Scored(model, similarity, found[1])
    return best


def name_parts(query: str) -> list[str]:
    """The query, then without up to MAX_VERSION_WORDS trailing words: where candidate names are looked up."""
    words = query.split()
    parts = [" ".join(words[:k]) for k in range(len(words) - 1, max(0, len(words) - MAX_VERSION_WORDS) - 1, -1) if k]
    return [query] + [p for p in parts if len(_compact(p)) >= 4]  # a shorter part matches too much to help


def _ahead(top: Scored, rival: Scored) -> bool:
    lead = top.similarity - rival.similarity
    margin = MARGIN if top.similarity >= ANSWER_AT else WIDE_MARGIN
    if lead >= margin:
        return True
    return lead > -NEAR and _downloads(top) >= POPULAR * (_downloads(rival) + 1)


def decide(scored: list[Scored], related: Callable[[Scored], set[str]]) -> Scored | list[Scored]:
    """The one meant (a Scored), or the close ones best first (maybe none). ``related(s)``: ids that are not
    rivals of ``s`` (its own inpainting models)."""
    ranked = sorted(scored, key=lambda s: (-s.rank, -s.similarity, s.model.is_inpainting, len(s.model.name),
                                           s.model.id))  # fmt: skip
    if not ranked:
        return []
    top = ranked[0]
    if top.similarity >= FLOOR:
        friends = related(top)
        if all(_ahead(top, r) for r in ranked[1:] if r.model.id not in friends):
            return top
    return [s for s in ranked if s.similarity >= LIST_AT]
