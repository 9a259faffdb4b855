"""Is a version an inpainting release? Evidence from every field a source offers (domain.md section 2).

``baseModelType`` is missing on old Civitai versions and back-filled as ``Standard`` even for inpainting ones,
so names count as much as the flag. Names are split at CamelCase boundaries before matching, and a match must not
follow a letter: "MajicInpainting" and "dreamshaper_8Inpainting" are inpainting, "ThinPaintLine" is not.
"""

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

# Spellings seen in the wild, typos included; "inp" only as its own token ("v1.2.1-inp").
_WORDS = r"in[\s_-]?paint(?:ing|ed|er)?|inpaitn?ing|inpaiting|inpainitng|inpaintng|impaint(?:ing)?|inp"
_INPAINT_RE = re.compile(rf"(?<![a-z])(?<!non-)(?<!non )(?<!no )(?:{_WORDS})(?![a-z])")
_CAMEL_RE = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")

# (what, confidence) per kind of evidence; combined as independent signals.
FLAG = 0.95
VERSION_NAME = 0.9
FILE_NAME = 0.85
MODEL_NAME = 0.8
TAG = 0.4
THRESHOLD = 0.5


def split_camel(text: str) -> str:
    return _CAMEL_RE.sub(" ", text).lower()


@lru_cache(maxsize=65536)  # each name is asked about twice per crawl item (own signal, then evidence)
def mentions_inpainting(text: str | None) -> bool:
    if not text:
        return False
    return _INPAINT_RE.search(split_camel(text)) is not None


def strip_inpainting(text: str) -> str:
    """The name without its inpainting words: "majicMIX realistic v7-inpainting" -> "majicmix realistic v7"."""
    stripped = _INPAINT_RE.sub(" ", split_camel(text))
    return re.sub(r"[\s_\-()\[\]]+", " ", stripped).strip()


@dataclass
class Detection:
    is_inpainting: bool = False
    confidence: float = 0.0
    evidence: list[str] = field(default_factory=list)


def _combine(signals: list[tuple[float, str]]) -> Detection:
    miss = 1.0
    for conf, _ in signals:
        miss *= 1.0 - conf
    confidence = round(1.0 - miss, 4)
    return Detection(confidence >= THRESHOLD, confidence, [why for _, why in signals])


def detect_version(
    *,
    version_name: str | None,
    base_model_type: str | None,
    file_names: list[str],
    model_name: str | None = None,
    model_tags: Sequence[str] = (),
    model_is_dedicated: bool = False,
) -> Detection:
    """Evidence for one version. ``model_is_dedicated``: no version of the model says inpainting on its own, so
    the model's name and tags speak for every version (a separate "<name> InPainting" model)."""
    if base_model_type in ("Pix2Pix", "Refiner"):
        return Detection(False, 0.0, [f'baseModelType is "{base_model_type}"'])
    signals: list[tuple[float, str]] = []
    if base_model_type == "Inpainting":
        signals.append((FLAG, 'baseModelType is "Inpainting"'))
    if mentions_inpainting(version_name):
        label = "" if base_model_type in (None, "Inpainting") else f' (typed "{base_model_type}")'
        signals.append((VERSION_NAME, f'version name "{version_name}" says inpainting{label}'))
    for name in file_names:
        if mentions_inpainting(name):
            signals.append((FILE_NAME, f'file "{name}" says inpainting'))
            break
    if model_is_dedicated:
        if mentions_inpainting(model_name):
            signals.append((MODEL_NAME, f'model name "{model_name}" says inpainting'))
        tagged = [t for t in model_tags if mentions_inpainting(t)]
        if tagged:
            signals.append((TAG, f'model tagged "{tagged[0]}"'))
    return _combine(signals)


def version_has_own_signal(version_name: str | None, base_model_type: str | None, file_names: list[str]) -> bool:
    return (
        base_model_type == "Inpainting"
        or mentions_inpainting(version_name)
        or any(mentions_inpainting(n) for n in file_names)
    )


_VERSION_LABEL_RE = re.compile(r"v?\d+(?:\.\d+)*[a-z]?")


def version_label(name: str) -> str:
    """A comparable label: "V6.0 B1 inpainting (VAE)" -> "6.0 b1 vae"; used to pair an inpainting version with
    the normal version it was made from."""
    return " ".join(t.lstrip("v") if _VERSION_LABEL_RE.fullmatch(t) else t for t in strip_inpainting(name).split())


def ambiguity(*, version_name: str | None, base_model_type: str | None, file_names: list[str],
              model_name: str | None, model_tags: list[str]) -> str | None:  # fmt: skip
    """Why a Civitai version's metadata cannot settle whether it is an inpainting release (its file's header
    then decides), or None when the metadata agrees with itself."""
    names_say = mentions_inpainting(version_name) or any(mentions_inpainting(n) for n in file_names)
    typed = base_model_type == "Inpainting"
    if typed and not names_say:
        return 'typed "Inpainting", but its names say nothing of it'
    if names_say and base_model_type == "Standard":
        return 'its names say inpainting, but it is typed "Standard"'
    model_says = mentions_inpainting(model_name) or any(mentions_inpainting(t) for t in model_tags)
    if model_says and not names_say and not typed:
        return "the model is named or tagged inpainting, but this version says nothing of it"
    return None


PROOF = 0.99
UNPROVEN_WEIGHT = 0.6  # how much of its margin over THRESHOLD a verdict keeps when its file could not be read


def with_proof(is_inpainting: bool, confidence: float, evidence: list[str], variant: str | None, how: str,
               problem: str | None = None) -> tuple[bool, float, list[str]]:  # fmt: skip
    """A version's verdict after a header read of its file: the UNet's input channels decide (``variant`` from
    merge.layout: inpaint/fill, or normal/pix2pix/depth); an unreadable file keeps the metadata's verdict at a
    lower confidence."""
    evidence = [e for e in evidence if not e.startswith(("its file's header", "its file could not be read"))]
    if variant in ("inpaint", "fill"):
        return True, PROOF, [f"its file's header proves it: {how}", *evidence]
    if variant in ("normal", "pix2pix", "depth"):
        return False, round(1 - PROOF, 4), [f"its file's header proves it is not an inpainting model: {how}",
                                            *evidence]  # fmt: skip
    lowered = THRESHOLD + (confidence - THRESHOLD) * UNPROVEN_WEIGHT if is_inpainting else confidence
    why = problem or "no UNet in its header"
    return is_inpainting, round(lowered, 4), [*evidence, f"its file could not be read to prove it ({why})"]
