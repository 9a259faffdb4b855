"""What the ladder weighs besides its subject, read from the registry in one pass.

`lookup` gathers these and hands them to `advisor.advice.ladder.recommend`, which ranks plain data: the ladder
holds no registry handle and makes no query, so its rules are tested with a few records and no database.
"""

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from crawler.registry import (
    ArtifactRecord,
    LinkRecord,
    ModelRecord,
    OfficialState,
    RouteFileState,
    VersionRecord,
    normalize_name,
)
from data.settings import Sites


@dataclass(frozen=True)
class Release:
    """An inpainting release as the registry lists it: its model and its version."""

    model: ModelRecord
    version: VersionRecord


@dataclass
class Facts:
    official_checks: dict[str, OfficialState] = field(default_factory=dict)  # mirror repo -> last Hub check
    route_checks: dict[tuple[str, str], RouteFileState] = field(default_factory=dict)  # (repo, file) -> check
    builds: list[ArtifactRecord] = field(default_factory=list)  # made here for the model, its version's first
    links: list[LinkRecord] = field(default_factory=list)  # releases linked to the model or a same-file twin
    releases: dict[str, Release] = field(default_factory=dict)  # a link's inpaint version id -> the release
    community: list[Release] = field(default_factory=list)  # other creators' inpainting versions named after it
    sites: Sites = field(default_factory=Sites)  # where the answer's pages and downloads are (the settings')


class _Registry(Protocol):  # what gathering reads (crawler.registry.reader.Reader)
    def official_checks(self) -> dict[str, OfficialState]: ...
    def route_checks(self) -> dict[tuple[str, str], RouteFileState]: ...
    def artifacts_for(self, model_id: str, version_id: str | None) -> list[ArtifactRecord]: ...
    def links_to(self, model_id: str) -> list[LinkRecord]: ...
    def model_of_version(self, version_id: str) -> ModelRecord | None: ...
    def versions(self, model_id: str) -> list[VersionRecord]: ...
    def model(self, model_id: str) -> ModelRecord | None: ...
    def name_candidates(self, wanted: str) -> Iterator[list[ModelRecord]]: ...


def gather(model_id: str | None, version_id: str | None, same_file_models: list[str], registry: _Registry,
           sites: Sites) -> Facts:  # fmt: skip
    """The facts about a registry model (and the models that publish the same file) that the ladder weighs."""
    facts = Facts(registry.official_checks(), registry.route_checks(), sites=sites)
    if model_id is None:
        return facts
    facts.builds = registry.artifacts_for(model_id, version_id)
    versions_of: dict[str, list[VersionRecord]] = {}
    for link in (ln for mid in [model_id, *same_file_models] for ln in registry.links_to(mid)):
        model = registry.model_of_version(link.inpaint_version_id)
        if model is None:  # the release was removed since the link was made
            continue
        if model.id not in versions_of:
            versions_of[model.id] = registry.versions(model.id)
        version = next((v for v in versions_of[model.id] if v.id == link.inpaint_version_id), None)
        if version is not None:
            facts.links.append(link)
            facts.releases[link.inpaint_version_id] = Release(model, version)
    linked = {link.inpaint_model_id for link in facts.links}
    facts.community = [r for r in community_releases(model_id, registry) if r.model.id not in linked]
    return facts


# what may follow a model's name in its inpainting version's name, besides version labels
_INPAINT_WORDS = {"inpainting", "inpaint", "inp", "inpainted", "version", "edition", "model", "fp16", "pruned"}
_VERSION = re.compile(r"^(?:v?\d+(?:[._]\d+)*[a-z]?|b\d+)$")


def community_releases(model_id: str, registry: _Registry) -> list[Release]:
    """Inpainting models other creators published for this model: of its family, named after it (its name,
    then inpainting words or version labels only, an inpainting word among them), most downloaded first, each
    with its newest inpainting version."""
    model = registry.model(model_id)
    if model is None or not model.name:
        return []
    name = normalize_name(model.name).split()
    versions_said: list[str] = []
    while len(name) > 1 and _VERSION.match(name[-1]):
        versions_said.insert(0, name.pop())  # "Realistic Vision V6.0 B1" is "Realistic Vision"
    found = []
    for batch in registry.name_candidates(" ".join([*name, "inpainting"])):
        for other in batch:
            words = (other.name_norm or normalize_name(other.name)).split()
            rest = words[len(name):]
            if (other.id == model.id or not other.is_inpainting or other.family != model.family
                    or (other.creator or "").lower() == (model.creator or "").lower() or words[: len(name)] != name
                    or not rest or not all(w in _INPAINT_WORDS or _VERSION.match(w) for w in rest)
                    or not any(w in _INPAINT_WORDS - {"version", "edition", "model", "fp16", "pruned"} for w in rest)
                    or any(_VERSION.match(w) and w not in versions_said for w in rest[: len(versions_said)])):
                continue  # fmt: skip  (an "Anything V3 Inpainting" is no version of "Anything V5")
            version = next((v for v in registry.versions(other.id) if v.is_inpainting), None)
            if version is not None:
                found.append(Release(other, version))
        break  # the cheapest batch: names holding the whole of it
    return sorted(found, key=lambda r: -(r.model.downloads or 0))
