"""Map what sources say about a base model to a family id from data/families.json."""

import re
from functools import cache

from data import base_models, load


def all_families() -> list[dict]:
    return load("families")["families"]


@cache
def by_id() -> dict[str, dict]:
    return {f["id"]: f for f in all_families()}


def family(family_id: str | None) -> dict | None:
    return by_id().get(family_id) if family_id else None


_key = base_models.key  # base model strings compare as Civitai's list compares them
civitai_base_model = base_models.civitai_base_model
api_only = base_models.api_only
not_an_image_model = base_models.not_an_image_model


@cache
def _civitai_index() -> dict[str, str]:
    return {_key(s): f["id"] for f in all_families() for s in f["civitai_base_models"]}


@cache
def _hf_index() -> dict[str, str]:
    return {r.lower(): f["id"] for f in all_families() for r in f["hf_base_repos"]}


def family_for_base_model(base_model: str | None) -> str | None:
    """Civitai ``baseModel`` string to family id; None for unknown strings (stored as-is, listed by status)."""
    if not base_model:
        return None
    return _civitai_index().get(_key(base_model))


def family_for_hf_repo(repo_id: str | None) -> str | None:
    return _hf_index().get(repo_id.lower()) if repo_id else None


def is_official_repo(repo_id: str | None) -> bool:
    """A family's base repo or a mirror of its official inpainting model or base: not a fine-tune."""
    if not repo_id:
        return False
    wanted = repo_id.lower()
    return family_for_hf_repo(repo_id) is not None or any(
        m.get("repo", "").lower() == wanted for f in all_families() for which in ("inpaint", "base")
        for m in (f.get(which) or {}).get("mirrors", []))  # fmt: skip


def lineage(family_id: str | None) -> list[dict]:
    """The family, then its parents (Pony -> SDXL); a parent loop in the data ends the walk."""
    chain, fam = [], family(family_id)
    while fam is not None and fam not in chain:
        chain.append(fam)
        fam = family(fam.get("parent"))
    return chain


@cache
def _word_index() -> dict[str, set[str]]:
    index: dict[str, set[str]] = {}
    for fam in all_families():
        for word in fam.get("query_words", []):
            index.setdefault(word, set()).add(fam["id"])
    return index


def asked_families(words: list[str]) -> tuple[list[str], set[str]] | None:
    """(the family words among ``words``, the families they allow), None when a query names no family: each
    word allows its families and those descending from them ("xl": SDXL, Pony, Illustrious, ...), and several
    words allow what all of them allow ("pony xl": Pony)."""
    said = [w for w in words if w in _word_index()]
    if not said:
        return None
    allowed: set[str] | None = None
    for word in said:
        named = _word_index()[word]
        these = {f["id"] for f in all_families() if any(a["id"] in named for a in lineage(f["id"]))}
        allowed = these if allowed is None else allowed & these
    return said, allowed or set()


def named_by(words: list[str]) -> set[str]:
    """The families ``words`` name themselves ("xl": SDXL; "pony": Pony), not those descending from them."""
    return {fid for w in words for fid in _word_index().get(w, ())}


_BASE_SPELLINGS = ("sd", "sd1", "sd3", "sdxl")  # "sd 1 5", "sd1 5", "sdxl 1 0": the base model, numbers and all


def without_family_words(words: list[str]) -> list[str]:
    """``words`` without the words that say a family, and the numbers of a base model's spelling ("dreamshaper
    sd15 7" and "dreamshaper 7 sd 1.5" both name DreamShaper 7). The first word is kept (it may be a name),
    and so is everything when nothing else would be left."""
    kept: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if kept and (word in _word_index() or word in _BASE_SPELLINGS):
            while word in _BASE_SPELLINGS and i < len(words) and words[i].isdigit() and len(words[i]) <= 2:
                i += 1
            continue
        kept.append(word)
    return kept


def official_target(family_id: str | None) -> dict | None:
    """The family whose official inpainting pair applies: its own, or its parent's (Pony -> SDXL)."""
    return next((fam for fam in lineage(family_id) if fam.get("inpaint")), None)


def _compact_name(value: str) -> str:
    return re.sub(r"[\W_]+", "", value.lower())


_indexes: dict[str, tuple[list, dict]] = {}


def _index_of(kind: str, build) -> dict:
    """``build(families)``, cached for as long as the families list is the same object (tests swap it)."""
    fams = all_families()
    held = _indexes.get(kind)
    if held is None or held[0] is not fams:
        held = _indexes[kind] = (fams, build(fams))
    return held[1]


def _name_index() -> dict[str, str]:
    """Every way of naming a family, spaces and punctuation aside ("SD1.5" is "sd 1.5")."""

    def build(fams: list[dict]) -> dict[str, str]:
        index: dict[str, str] = {}
        for f in fams:
            for n in [f["id"], f["name"], *f.get("aliases", []), *f["civitai_base_models"], *f["hf_base_repos"]]:
                index.setdefault(_compact_name(n), f["id"])
        return index

    return _index_of("names", build)


def family_by_name(text: str) -> dict | None:
    """ "SDXL 1.0", "sd15", "Stable Diffusion 1.5", "Pony": a base model, not a fine-tune."""
    return family(_name_index().get(_compact_name(text)))


def _file_index() -> dict[str, tuple[str, str]]:
    def build(fams: list[dict]) -> dict[str, tuple[str, str]]:
        index: dict[str, tuple[str, str]] = {}
        for f in fams:
            for role in ("inpaint", "base"):
                names = [(f.get(role) or {}).get("file") or "", *f.get("file_names", {}).get(role, [])]
                for name in names:
                    if name and "/" not in name:  # "unet/diffusion_pytorch_model..." names no one file
                        index.setdefault(name.lower(), (f["id"], role))
        return index

    return _index_of("files", build)


def official_file(name: str) -> tuple[dict, str] | None:
    """(family, "inpaint" | "base") of an official checkpoint's file name ("sd-v1-5-inpainting.ckpt")."""
    hit = _file_index().get(name.strip().lower())
    return (by_id()[hit[0]], hit[1]) if hit else None  # the index holds the families' own ids


def architecture(family_id: str | None) -> str | None:
    """What the family's tensors look like (data/families.json ``architecture``): Pony's is SDXL's."""
    return (family(family_id) or {}).get("architecture")


def agrees_with_tensors(said: str | None, told: str) -> bool:
    """Whether a file whose tensors tell family ``told`` may be of family ``said``: ``told`` is ``said`` or
    one of its parents (Pony's file tells SDXL), or ``told`` is a bare architecture that ``said`` shares
    (Playground v2 has SDXL's). A size the tensors tell (FLUX.2 [klein] 9B) disagrees with another size."""
    if any(f["id"] == told for f in lineage(said)):
        return True
    return architecture(told) == told and architecture(said) == told


# (how a family word is spelled out in names, once normalised; the word; a LIKE pattern that finds those
# spellings in the raw names, for the registry's pre-filter): "SD 1.5", "SDXL1.0", "Flux.2"
_SPELLED = [(re.compile(r"\bsd ?1 ?5\b"), "sd15", "%sd%1%5%"),
            (re.compile(r"\bsd ?xl(?: ?1 ?0)?\b"), "sdxl", "%sd%xl%"),
            (re.compile(r"\bflux ?2\b"), "flux2", "%flux%2%"),
            (re.compile(r"\bsd ?3 ?5\b"), "sd35", "%sd%3%5%")]  # fmt: skip


def _name_words(text: str) -> list[str]:
    """A name's words as family words are written, read both whole and CamelCase split ("juggernautXL" says
    "xl", "NoobAI" says "noobai"), with "SD 1.5" as "sd15"."""
    from crawler.detect import split_camel
    from crawler.registry import normalize_name

    found: list[str] = []
    for words in (normalize_name(text), normalize_name(split_camel(text))):
        for spelled, word, _ in _SPELLED:
            words = spelled.sub(word, words)
        found += words.split()
    return list(dict.fromkeys(found))


def contradicting_words(family_id: str | None, names: list[str]) -> list[str]:
    """Family words in ``names`` (a version's, its file's, its model's) that name only families of another
    architecture than ``family_id``'s: "XL" in a version said to be SD 1.5 (its file is to tell). None where
    another family word agrees ("Flux-style XL" said to be SDXL: a style, named)."""
    own = architecture(family_id)
    if own is None:
        return []
    found = []
    for word in dict.fromkeys(w for name in names if name for w in _name_words(name)):
        named = _word_index().get(word)
        if named and all(architecture(f) != own for f in named):
            found.append(word)
        elif named:
            return []
    return found


def contradiction_patterns() -> list[tuple[str, list[str]]]:
    """For the registry's cheap pre-filter of ``contradicting_words``: (a LIKE pattern that finds a family word
    in raw names, however it is spelled, and the families that word would contradict), for every family word.
    The pattern finds more than the word ("pixel" for "xl"): ``contradicting_words`` decides."""
    spelled = {word: pattern for _, word, pattern in _SPELLED}
    out = []
    for word, named in sorted(_word_index().items()):
        archs = {architecture(f) for f in named}
        out.append((spelled.get(word, f"%{word}%"),
                    sorted(f["id"] for f in all_families() if f.get("architecture") not in archs)))  # fmt: skip
    return out
