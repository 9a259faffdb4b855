"""What the ladder weighs besides its subject, read from the registry in one pass.

`lookup` gathers these and hands them to `advisor.advice.ladder.recommend`, which ranks plain data: the ladder
holds no registry handle and makes no query, so its rules are tested with a few records and no database.
"""

from dataclasses import dataclass, field
from typing import Protocol

from crawler.registry.reader import (
    ArtifactRecord,
    LinkRecord,
    ModelRecord,
    OfficialState,
    RouteFileState,
    VersionRecord,
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
    sites: Sites = field(default_factory=Sites)  # where the answer's pages and downloads are (the settings')


class _Registry(Protocol):  # what gathering reads (crawler.registry.reader.Reader)
    def official_checks(self) -> dict[str, OfficialState]: ...
    def route_checks(self) -> dict[tuple[str, str], RouteFileState]: ...
    def artifacts_for(self, model_id: str, version_id: str | None) -> list[ArtifactRecord]: ...
    def links_to(self, model_id: str) -> list[LinkRecord]: ...
    def model_of_version(self, version_id: str) -> ModelRecord | None: ...
    def versions(self, model_id: str) -> list[VersionRecord]: ...


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
    return facts
