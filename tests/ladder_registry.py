"""A registry stand-in for ladder tests: the queries `ladder.recommend` makes, answered from a few facts."""

from types import SimpleNamespace


class Releases:
    """One model (``civitai:1``) with inpainting releases made for some of its versions: what the ladder asks
    of a registry, without one."""

    def __init__(self, name: str, made_for: dict[str, float]):
        self.name = name
        self.made_for = made_for  # parent version ("v3") -> the release link's detection confidence

    def official_checks(self):
        return {}

    def route_checks(self):
        return {}

    def artifacts_for(self, *_):
        return []

    def links_to(self, model_id):
        links = [SimpleNamespace(kind="same-model", parent_version_id=f"civitai:{v}",
                                 inpaint_version_id=f"civitai:{v}-inp", confidence=conf, evidence=[])
                 for v, conf in self.made_for.items()]  # fmt: skip
        return sorted(links, key=lambda ln: -ln.confidence)  # as the registry returns them

    def model_of_version(self, version_id):
        return SimpleNamespace(id="civitai:1", source="civitai", source_id="1", name=self.name)

    def versions(self, model_id):
        return [SimpleNamespace(id=f"civitai:{v}-inp", name=f"{v} inpainting", primary_file=f"mix_{v}-inp.safetensors",
                                sha256=None) for v in self.made_for]  # fmt: skip
