"""Which of a model's inpainting releases the ladder picks: the one made for the user's version, else the nearest
by the model's version order (the newer on a tie), detection confidence only breaking ties; the others named."""

from types import SimpleNamespace

from advisor.advice import ladder
from tests.ladder_facts import releases

VERSIONS = ["v5", "v4", "v3", "v2", "v1"]  # Civitai's order: the newest first


def _ask(version: str | None, made_for: dict[str, float]):
    subject = ladder.Subject("Mix", "sd1", model_id="civitai:1", version_id=f"civitai:{version}" if version else None,
                             versions=[SimpleNamespace(id=f"civitai:{v}", position=i)
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
