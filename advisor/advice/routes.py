"""Inpainting routes beside the checkpoint ladder (data/routes.json): the Fooocus patch, ControlNets, adapters,
fill models and sampler methods, weighed for one model by its family and markers on the same scale as the
official model and a build, each score with the reasons that moved it."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING

from crawler import families

if TYPE_CHECKING:
    from merge.distance import BaseDistance

KINDS = ("patch", "controlnet", "adapter", "lora", "fill-model", "sampler")


@dataclass
class RouteFile:
    repo: str
    file: str
    size: int | None = None
    size_hint: str | None = None
    sha256: str | None = None


@dataclass
class Route:
    """One route weighed for one model: ``score`` after its penalties, ``reasons`` say which and why."""

    id: str
    name: str
    kind: str
    summary: str
    score: int
    reasons: list[str] = field(default_factory=list)
    how: list[str] = field(default_factory=list)  # "UI: what to use", best known first
    files: list[RouteFile] = field(default_factory=list)
    where: str | None = None  # for weights not on the Hub
    licence: str | None = None
    gated: bool = False
    sources: list[str] = field(default_factory=list)


@cache
def _data() -> dict:
    from data import load

    return load("routes")


def markers_of(name: str, base_model: str | None, header_markers: list[str], family_id: str | None,
               tags: list[str] | None = None) -> dict[str, str]:  # fmt: skip
    """The markers that move a route's score, each with what showed it: the header's v_pred key, the family's
    prediction, Civitai's base model string, a word in the model's or version's name, or one of its tags."""
    found: dict[str, str] = {}
    words = set(re.findall(r"[a-z0-9]+(?:[-_][a-z0-9]+)*", (name or "").lower()))
    glued = set()  # each pair of parts as one word: "V-Pred-1.0-Version" says "v-pred" (and "vpred")
    for compound in list(words):
        parts = re.split(r"[-_]", compound)
        words |= set(parts)
        glued |= {glue.join(pair) for pair in zip(parts, parts[1:], strict=False) for glue in ("-", "_", "")}
    for marker, spec in _data()["markers"].items():
        if any(w in words or w in (tags or []) for w in spec.get("not_with", [])):
            continue  # contradicted: a "realistic" model tagged anime is not a stylized one
        if base_model and base_model.strip().lower() in {b.lower() for b in spec["base_models"]}:
            found[marker] = f"its base model is {base_model}"
        elif hit := next((w for w in spec["words"] if w in words), None) or \
                next((w for w in spec["words"] if w in glued), None):  # fmt: skip
            found[marker] = f"its name says {hit!r}"
        elif tag := next((t for t in spec.get("tags", []) if t in (tags or [])), None):
            found[marker] = f"it is tagged {tag!r}"
    fam = families.family(family_id)
    if "v_pred" in header_markers:
        found["v-prediction"] = "its header carries the v_pred marker"
    elif fam is not None and fam.get("prediction") == "v":
        found.setdefault("v-prediction", f"{fam['name']} predicts v")
    return found


def distance_note(distance: BaseDistance) -> str:
    """The evidence line of a measured distance that is not far (far says so in its penalty)."""
    near = _data()["markers"]["far-from-base"]["measured"]["near"]
    if distance.relative <= near:
        return f"its UNet measured {distance}: close to the base (at {near:.0%} or less), whatever names and tags say"
    return f"its UNet measured {distance}"


def with_distance(found: dict[str, str], distance: BaseDistance | None) -> dict[str, str]:
    """The markers once the file's distance from its base was measured (data/routes.json, ``far-from-base``):
    far, the marker in place of a style that names and tags say; near, no ``stylized`` from them either; in
    between, names and tags decide."""
    if distance is None:
        return found
    bands = _data()["markers"]["far-from-base"]["measured"]
    out = dict(found)
    if distance.relative >= bands["far"]:
        out.pop("stylized", None)
        out["far-from-base"] = f"its UNet measured {distance}: far from the base, at {bands['far']:.0%} or more"
    elif distance.relative <= bands["near"]:
        out.pop("stylized", None)
    return out


def _family_chain(family_id: str | None) -> list[str]:
    """The family, then its parents (Pony -> SDXL): a route scored for SDXL serves Pony unless Pony has its own."""
    return [fam["id"] for fam in families.lineage(family_id)]


def _base_score(scores: dict, family_id: str | None) -> int | None:
    for fid in _family_chain(family_id):
        if fid in scores:
            return scores[fid]
    return scores.get("*") if family_id else None


def weigh(spec: dict, family_id: str | None, markers: dict[str, str]) -> tuple[int, list[str]] | None:
    """(score, reasons) of a route or checkpoint spec for this family and these markers; None when it does not
    serve the family."""
    score = _base_score(spec["score"], family_id)
    if score is None:
        return None
    chain = _family_chain(family_id)
    reasons = []
    for p in spec.get("penalties", []):
        if ("family" in p and p["family"] in chain[:1]) or ("marker" in p and p["marker"] in markers):
            score -= p["points"]
            why = f" ({markers[p['marker']]})" if "marker" in p else ""
            reasons.append(f"{p['reason']}{why}")
    return max(score, 0), reasons


def checkpoint_weight(kind: str, family_id: str | None, markers: dict[str, str]) -> tuple[int, list[str]]:
    """The official model's or a build's score on the routes' scale."""
    return weigh(_data()["checkpoints"][kind], family_id, markers) or (0, [])


def checkpoint_how(family_id: str | None) -> str:
    how = _data()["checkpoints"]["how"]
    return next((how[f] for f in _family_chain(family_id) if f in how), how["*"])


def routes_for(family_id: str | None, markers: dict[str, str]) -> list[Route]:
    """Every route that serves the family, best first (ties keep the data file's order)."""
    found = []
    for spec in _data()["routes"]:
        weighed = weigh(spec, family_id, markers)
        if weighed is None:
            continue
        score, reasons = weighed
        found.append(Route(
            spec["id"], spec["name"], spec["kind"], spec["summary"], score, reasons,
            [f"{u['ui']}: {u['how']}" for u in spec["ui"]],
            [RouteFile(f["repo"], f["file"], f.get("size"), f.get("size_hint"), f.get("sha256"))
             for f in spec["files"]],
            spec.get("where"), spec.get("licence"), bool(spec.get("gated")), list(spec["sources"]),
        ))  # fmt: skip
    return sorted(found, key=lambda r: -r.score)



def spec(route_id: str) -> dict | None:
    """A route's entry in data/routes.json, as written there."""
    return next((r for r in _data()["routes"] if r["id"] == route_id), None)
