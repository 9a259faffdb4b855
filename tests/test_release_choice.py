"""Which of a model's inpainting releases the ladder picks: the one made for the user's version, else the nearest
by the model's version order (the newer on a tie), detection confidence only breaking ties; the others named."""

from types import SimpleNamespace

from advisor.advice import ladder
from advisor.advice.facts import Facts, Release
from crawler.registry import LinkRecord, ModelRecord, VersionRecord
from tests.ladder_facts import releases

VERSIONS = ["v5", "v4", "v3", "v2", "v1"]  # Civitai's order: the newest first


def _ask(version: str | None, made_for: dict[str, float]):
    subject = ladder.Subject("Mix", "sd1", model_id="civitai:1", version_id=f"civitai:{version}" if version else None,
                             versions=[SimpleNamespace(id=f"civitai:{v}", name=f"v{v}", position=i)
                                       for i, v in enumerate(VERSIONS)])  # fmt: skip
    rec, _, warnings = ladder.recommend(subject, releases("Mix", made_for))
    return rec, warnings


def test_the_release_made_for_your_version_wins_over_a_more_confident_one():
    rec, _ = _ask("v3", {"v5": 0.99, "v3": 0.5})
    assert rec.target.version_id == "civitai:v3-inp" and rec.for_your_version
    assert any(e.startswith("also: Mix — v5 inpainting (made for a newer version") for e in rec.evidence)


def test_the_nearest_release_wins_over_an_older_more_confident_one():
    rec, warnings = _ask("v3", {"v5": 0.95, "v4": 0.6, "v1": 0.99})  # v4 is one step away, v5 two, v1 two
    assert rec.target.version_id == "civitai:v4-inp" and "made for a newer version than yours" in rec.reason
    assert any("newer version" in w for w in warnings)
    others = [e for e in rec.evidence if e.startswith("also: ")]
    assert [o.split(" (")[0] for o in others] == ["also: Mix — v5 inpainting", "also: Mix — v1 inpainting"]


def test_on_equal_distance_the_newer_release_wins_and_confidence_breaks_what_is_left():
    rec, _ = _ask("v3", {"v2": 0.99, "v4": 0.5})  # one step older, one step newer
    assert rec.target.version_id == "civitai:v4-inp"
    rec, _ = _ask("v3", {"v4": 0.4})  # alone: whatever its confidence
    assert rec.target.version_id == "civitai:v4-inp"


def test_with_no_version_asked_the_newest_release_is_the_answer():
    rec, _ = _ask(None, {"v2": 0.99, "v4": 0.5})
    assert rec.target.version_id == "civitai:v4-inp" and "the newest inpainting release" in rec.reason


def _version(vid: str, name: str, base: str, inpainting: bool = False):
    return SimpleNamespace(id=vid, name=name, base_model=base, is_inpainting=inpainting)


def test_the_default_version_is_the_newest_without_a_speed_marker_unless_the_words_ask_for_one():
    versions = [_version("civitai:v3", "V5.1 Hyper (VAE)", "SD 1.5 Hyper"),  # uploaded last, listed first
                _version("civitai:v2", "V6.0 B1 Inpainting (VAE)", "SD 1.5", inpainting=True),
                _version("civitai:v1", "V6.0 B1 (VAE)", "SD 1.5")]  # fmt: skip
    assert ladder.choose_version(versions, None, "Realistic Vision V6.0 B1").id == "civitai:v1"
    assert ladder.choose_version(versions, None, "realistic vision").id == "civitai:v1"
    assert ladder.choose_version(versions, None, "realistic vision hyper").id == "civitai:v3"
    assert ladder.choose_version(versions, "civitai:v3").id == "civitai:v3"  # named by id: as named
    lightning = [_version("civitai:v9", "V9 Lightning", "SDXL 1.0"), _version("civitai:v8", "V8", "SDXL 1.0")]
    assert ladder.choose_version(lightning, None, "juggernaut xl").id == "civitai:v8"  # by its name too
    assert ladder.choose_version(lightning[:1], None).id == "civitai:v9"  # nothing else to choose


def test_only_the_words_beyond_the_models_name_ask_for_a_version():
    from advisor.advice.lookup import _beyond
    from advisor.advice.query import parse_query

    assert _beyond(parse_query("Turbo Vision XL"), "Turbo Vision XL") == ""  # its name, not a wish for Turbo
    assert _beyond(parse_query("turbo vision xl lightning"), "Turbo Vision XL") == "lightning"
    assert _beyond(parse_query("https://civitai.com/models/1/dreamshaper-xl-turbo"), "DreamShaper XL") == ""


def _version(vid: str, name: str, position: int, inpainting: bool = False):
    return VersionRecord(vid, "civitai:7", name, "SD 1.5", "sd1", None, position, inpainting,
                         primary_file=f"{vid}.safetensors")  # fmt: skip


def test_a_release_of_a_lineage_that_ended_is_not_given_to_the_new_maintainers_version():
    versions = [_version("civitai:v3", "v2 Rebirth", 0), _version("civitai:v2", "v1.2.2-EOL", 1),
                _version("civitai:v1", "v1.2.2 inpainting", 2, True)]  # fmt: skip
    model = ModelRecord("civitai:7", "civitai", "7", "ReV Animated", "Zovya", "SD 1.5", "sd1", False, True)
    link = LinkRecord("civitai:v1", "civitai:7", "civitai:7", None, "same-model", 0.9, [])
    facts = Facts(links=[link], releases={"civitai:v1": Release(model, versions[2])})
    for version, offered in (("civitai:v3", False), ("civitai:v2", True)):
        subject = ladder.Subject("ReV Animated", "sd1", model_id="civitai:7", version_id=version,
                                 version_name=next(v.name for v in versions if v.id == version), versions=versions)
        rec, alternatives, warnings = ladder.recommend(subject, facts)
        given = [r for r in [rec, *alternatives] if r.kind == "own-release"]
        assert bool(given) == offered, version
        if not offered:  # said, with the way to get it
            assert any("new lineage after v1.2.2-EOL" in w and "ask for that version" in w for w in warnings)


def test_another_creators_inpainting_version_is_offered_with_its_evidence_and_tags_weigh_the_official_model():
    model = ModelRecord("civitai:8", "civitai", "8", "Photon Inpainting", "someone_else", "SD 1.5", "sd1", True, True)
    model.downloads = 20000
    facts = Facts(community=[Release(model, _version("civitai:v80", "v1", 0, True))])
    subject = ladder.Subject("Photon", "sd1", model_id="civitai:1", version_id="civitai:v10", version_name="v1")
    rec, alternatives, warnings = ladder.recommend(subject, facts)
    community = next(a for a in alternatives if a.kind == "community-release")
    assert rec.kind == "official" and [a.kind for a in alternatives][0] == "build"  # a stranger's upload: not first
    assert community.target.model_id == "civitai:8" and "someone_else published" in community.reason
    assert "20,000 downloads" in community.evidence and "check its page" in community.reason
    assert any("not its creator's own release" in e for e in community.evidence)
    anime = ladder.Subject("Aniverse", "sd1", model_id="civitai:2", tags=["anime"])
    rec, alternatives, _ = ladder.recommend(anime)
    official = next(a for a in alternatives if a.kind == "official")
    assert rec.kind == "build" and official.score == 58 and rec.score == 66
    tagged_both = ladder.Subject("majicMIX realistic", "sd1", model_id="civitai:3", tags=["anime", "realistic"])
    assert ladder.recommend(tagged_both)[0].kind == "official"  # noisy tags: "realistic" says it is no anime model



def _lineage(names: list[str], asked: str, release_for: str):
    """The own-release a version gets among ``names`` (newest first), where ``release_for`` is the inpainting
    version, a version of the model itself (no detected parent, as the crawler leaves it for "-EOL" names)."""
    versions = [_version(f"civitai:v{i}", n, i, n == release_for) for i, n in enumerate(names)]
    model = ModelRecord("civitai:7", "civitai", "7", "Mix", "c", "SD 1.5", "sd1", False, True)
    release = next(v for v in versions if v.name == release_for)
    facts = Facts(links=[LinkRecord(release.id, "civitai:7", "civitai:7", None, "same-model", 0.9, [])],
                  releases={release.id: Release(model, release)})  # fmt: skip
    version = next(v for v in versions if v.name == asked)
    rec, alternatives, _ = ladder.recommend(ladder.Subject("Mix", "sd1", model_id="civitai:7", version_id=version.id,
                                                           version_name=asked, versions=versions), facts)
    return [r for r in [rec, *alternatives] if r.kind == "own-release"]


def test_the_lineage_rule_reads_whole_words_and_the_nearest_end():
    # "v1" restarted after the EOL: "v1.2.2-EOL Inpainting" is the old lineage's, though it holds "v1"
    assert _lineage(["v1", "v1.2.2-EOL", "v1.2.2-EOL Inpainting"], "v1", "v1.2.2-EOL Inpainting") == []
    # "deprecated" marks a superseded version of the same creator's line: its release still serves v3
    assert _lineage(["v3", "v2 (deprecated)", "v2 Inpainting", "v1"], "v3", "v2 Inpainting")
    # asked as v2, the nearest end older than it (v1-EOL) counts, not only the newest (v3-EOL)
    assert _lineage(["v4", "v3-EOL", "v2", "v1-EOL", "v1 inpainting"], "v2", "v1 inpainting") == []
