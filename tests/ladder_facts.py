"""Facts for ladder tests: what `lookup` would gather from a registry, written as a few records."""

from advisor.advice.facts import Facts, Release
from crawler.registry import LinkRecord, ModelRecord, VersionRecord


def releases(name: str, made_for: dict[str, float]) -> Facts:
    """One model (``civitai:1``) with inpainting releases made for some of its versions: ``made_for`` maps a
    parent version ("v3") to the release link's detection confidence."""
    model = ModelRecord("civitai:1", "civitai", "1", name, None, "SD 1.5", "sd1", False, True)
    links = [LinkRecord(f"civitai:{v}-inp", "civitai:1", "civitai:1", f"civitai:{v}", "same-model", conf, [])
             for v, conf in made_for.items()]  # fmt: skip
    versions = {
        f"civitai:{v}-inp": VersionRecord(f"civitai:{v}-inp", "civitai:1", f"{v} inpainting", "SD 1.5", "sd1", None, i,
                                          True, primary_file=f"mix_{v}-inp.safetensors")  # fmt: skip
        for i, v in enumerate(made_for)
    }
    return Facts(links=sorted(links, key=lambda ln: -ln.confidence),  # as the registry returns them
                 releases={vid: Release(model, v) for vid, v in versions.items()})  # fmt: skip
