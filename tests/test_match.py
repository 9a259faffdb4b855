"""advisor.advice.match's rules one by one (the evaluation set checks them together on a crawled registry), and the
bundled names of families and official files."""

from dataclasses import dataclass

import pytest

from advisor.advice import match
from advisor.advice.lookup import lookup
from crawler import families
from crawler import registry as registry_layer
from crawler.registry import normalize_name
from tests import eval_world


@dataclass
class M:
    id: str
    name: str
    downloads: int = 0
    is_inpainting: bool = False

    @property
    def name_norm(self) -> str:
        return normalize_name(self.name)


def v(name: str, pos: int = 0, inpainting: bool = False) -> match.VersionName:
    return match.VersionName(f"v:{name}", name, inpainting, pos)


def decide(query: str, models: list[M], versions: dict | None = None):
    wanted = normalize_name(query)
    scored = [match.score(wanted, m, (versions or {}).get(m.id, [])) for m in models]
    return match.decide(scored, lambda s: {s.model.id})


def test_a_name_is_compared_without_its_alias_and_its_version_label():
    assert match.name_variants("majicmix realistic 麦橘写实") == ["majicmix realistic 麦橘写实", "majicmix realistic",
                                                              "麦橘写实", "majicmix realistic"]  # fmt: skip
    assert match.name_variants("realistic vision v6 0 b1")[-1] == "realistic vision"
    assert match.name_similarity("majicmix realistic", "majicmix realistic 麦橘写实") == 100
    assert match.name_similarity("麦橘写实", "majicmix realistic 麦橘写实") == 100
    assert match.name_similarity("realistic vision", "realistic vision v6 0 b1") == 100
    # a query that ends in a version is not the other name "version aside"
    assert match.name_similarity("animagine xl 4", "animagine xl v3 1") < 90


@pytest.mark.parametrize("query", ["dreamshapr", "dreamshpaer", "dreamshapper", "dream shaper", "DreamShaper!"])
def test_one_letter_typos_swaps_and_spaces_answer_directly(query):
    models = [M("ds", "DreamShaper", 1_500_000), M("dsxl", "DreamShaper XL", 700_000), M("mix", "DreamShaper Mix", 300)]
    assert decide(query, models).model.id == "ds"


def test_a_missing_space_between_words():
    models = [M("jx", "Juggernaut XL", 1_200_000), M("j", "Juggernaut", 300_000)]
    assert decide("juggernautxl", models).model.id == "jx"


def test_two_close_names_are_listed_not_guessed():
    models = [M("a", "Animagine XL V3.1", 300_000), M("b", "Animagine XL 4.0", 100_000)]
    listed = decide("animagine xl", models)
    assert isinstance(listed, list) and {s.model.id for s in listed} == {"a", "b"}


def test_a_three_letter_first_word_lists_its_names_and_never_answers_alone():
    """"wai" is the first word of WAI-NSFW-illustrious-SDXL and WAI-ANI-NSFW-PONYXL: both are listed, the most
    downloaded first; a short name whose first word it is ("WAI Mix") is listed too, not taken for it."""
    models = [M("ill", "WAI-NSFW-illustrious-SDXL", 800_000), M("pony", "WAI-ANI-NSFW-PONYXL", 300_000),
              M("other", "Waifu Diffusion", 900_000)]  # fmt: skip
    listed = decide("wai", models)
    assert isinstance(listed, list) and [s.model.id for s in listed] == ["ill", "pony"]
    alone = decide("wai", [M("mix", "WAI Mix", 5_000_000)])
    assert isinstance(alone, list) and [s.model.id for s in alone] == ["mix"]


def test_among_names_about_as_close_the_far_more_downloaded_one_is_meant():
    models = [M("orig", "CyberRealistic Inpainting Collection", 50_000),
              M("copy", "CyberRealistic inpainting merge", 400)]  # fmt: skip
    assert decide("cyberrealistic inpainting", models).model.id == "orig"
    # without the gap in downloads they are two candidates
    models[1].downloads = 30_000
    assert isinstance(decide("cyberrealistic inpainting", models), list)


def test_a_version_named_at_the_end_of_the_query_picks_that_version():
    models = [M("ds", "DreamShaper", 1_500_000), M("copy", "DreamShaper", 300), M("two", "DreamShaper 2.0", 200)]
    versions = {"ds": [v("8", 0), v("8 Inpainting", 1, True), v("7", 2)], "copy": [v("fp16")], "two": [v("v1")]}
    assert decide("dreamshaper 7", models, versions).version.name == "7"
    assert decide("dreamshaper v8", models, versions).version.name == "8"
    assert decide("dreamshaper 8 inpainting", models, versions).version.name == "8 Inpainting"
    assert decide("dreamshapr 8", models, versions).model.id == "ds"  # a typo in the name part too


@pytest.mark.parametrize(
    "words, names, meant",
    [
        ("v9", ["V9 Lightning", "v9 + RunDiffusionPhoto 2"], "v9 + RunDiffusionPhoto 2"),  # variants must be asked
        ("v9 lightning", ["V9 Lightning", "v9 + RunDiffusionPhoto 2"], "V9 Lightning"),
        ("v5.1", ["V5.1 Hyper (VAE)", "V5.1 (VAE)", "V5.1 Inpainting (VAE)"], "V5.1 (VAE)"),
        ("vpred", ["V-Pred-1.0-Version", "Epsilon-pred 1.1-Version"], "V-Pred-1.0-Version"),
        ("v10", ["Meina V11", "Meina V10"], "Meina V10"),
        ("pure evolution", ["pure Evolution InPainting", "pure Evolution V5"], "pure Evolution V5"),
        ("v6 inp", ["v6", "v6 inpainting"], "v6 inpainting"),
    ],
)
def test_version_words(words, names, meant):
    found = match.best_version(normalize_name(words).split(), [v(n, i) for i, n in enumerate(names)])
    assert found is not None and found[1].name == meant


def test_words_that_name_no_version_are_not_a_version():
    assert match.best_version(["inpainting"], [v("8"), v("7")]) is None
    assert match.best_version(["xyz"], [v("v1.0")]) is None


@pytest.mark.parametrize(
    "text, family",
    [("SDXL", "sdxl"), ("sd1.5", "sd1"), ("SD 1.5", "sd1"), ("sd15", "sd1"), ("Stable Diffusion 1.5", "sd1"),
     ("stable diffusion xl", "sdxl"), ("Flux.1 D", "flux1"), ("pony", "pony"), ("SD 3.5 Large", "sd3")],
)  # fmt: skip
def test_families_answer_by_their_common_names(text, family):
    assert families.family_by_name(text)["id"] == family


def test_a_fine_tune_name_is_not_a_family():
    assert families.family_by_name("DreamShaper") is None and families.family_by_name("sdxl mix") is None


@pytest.mark.parametrize(
    "name, family, role",
    [("sd-v1-5-inpainting.ckpt", "sd1", "inpaint"), ("SD-V1-5-INPAINTING.CKPT", "sd1", "inpaint"),
     ("v1-5-pruned-emaonly.safetensors", "sd1", "base"), ("sd_xl_base_1.0.safetensors", "sdxl", "base"),
     ("512-inpainting-ema.ckpt", "sd2", "inpaint"), ("flux1-fill-dev.safetensors", "flux1", "inpaint")],
)  # fmt: skip
def test_official_files_by_their_file_names(name, family, role):
    fam, found_role = families.official_file(name)
    assert (fam["id"], found_role) == (family, role)
    assert families.official_file("diffusion_pytorch_model.fp16.safetensors") is None  # names no one file


def test_a_file_name_the_registry_knows_answers_with_its_model_and_version(registry_db, serve):
    eval_world.build(registry_db, serve)
    r = lookup("JuggernautXL_v9Rdphoto2Lightning.safetensors", db=registry_db, offline=True)  # case aside
    assert (r.match.model_id, r.match.version_name) == ("civitai:133005", "V9 Lightning")
    with registry_layer.open(registry_db, "lookup") as reader:
        assert reader.by_file_name("no-such-file.safetensors") == []


def test_an_exact_name_wins_unless_it_is_a_strangers_copy_of_a_far_more_popular_model(registry_db, serve):
    eval_world.build(registry_db, serve)
    r = lookup("DreamShaper Mix", db=registry_db, offline=True)
    assert r.match.name == "DreamShaper Mix"  # exact, and nothing popular is named as well
    r = lookup("majicMIX realistic", db=registry_db, offline=True)  # a stranger's re-upload has this exact name
    assert r.match.model_id == "civitai:43331"
    r = lookup("DreamShaper", db=registry_db, offline=True)  # two exact names: the original by far
    assert r.match.model_id == "civitai:4384"
    # "Juggernaut XL Lightning" is a stranger's exact name; Juggernaut XL's version "V9 Lightning" is named about
    # as well and downloaded far more: a careful reader means that one
    r = lookup("Juggernaut XL Lightning", db=registry_db, offline=True)
    assert (r.match.model_id, r.match.version_name) == ("civitai:133005", "V9 Lightning")


def test_a_strangers_exact_name_loses_to_a_popular_model_and_version_named_as_well(registry_db, serve):
    """The popular model's name does not hold the query here (no "turbo" in "DreamShaper XL"): its version does."""
    from crawler.registry.schema import Model
    from crawler.registry.upsert import upsert

    eval_world.build(registry_db, serve)
    reg = registry_layer.open(registry_db)
    with reg.engine.begin() as conn:
        upsert(conn, Model.__table__, [{"id": "civitai:9999999", "source": "civitai", "source_id": "9999999",
                                        "name": "DreamShaper XL Turbo", "name_norm": "dreamshaper xl turbo",
                                        "type": "Checkpoint", "creator": "stranger", "tags": "[]", "nsfw": False,
                                        "mode": None, "base_model": "SDXL 1.0", "family": "sdxl",
                                        "is_inpainting": False, "has_inpainting": False, "updated_at": None,
                                        "content_hash": "", "downloads": 40}])  # fmt: skip
    r = lookup("dreamshaper xl turbo", db=registry_db, offline=True)
    assert (r.match.model_id, r.match.version_name) == ("civitai:112902", "Turbo DPM SDE")


@pytest.mark.parametrize("query, meant", [("photon mix v5", "v5"), ("photon mix 5", "v5"), ("photon mix v3", "v3"),
                                          ("Photon Mix V3", "v3")])  # fmt: skip
def test_a_number_in_the_query_decides_between_names_that_differ_by_it(query, meant):
    models = [M("v5", "Photon Mix V5/Pruned", 1000), M("v3", "Photon Mix V3", 1000)]
    assert decide(query, models).model.id == meant


def test_a_number_that_names_a_version_is_left_to_the_versions():
    """"Realistic Vision V6.0 B1" is the model's name; "realistic vision v5.1" asks for its version V5.1."""
    rv = M("rv", "Realistic Vision V6.0 B1", 2_000_000)
    found = decide("realistic vision v5.1", [rv, M("other", "Realistic Stock Photo", 1000)],
                   {"rv": [v("V6.0 B1"), v("V5.1", 1)]})  # fmt: skip
    assert found.model.id == "rv" and found.version.name == "V5.1"


@pytest.mark.parametrize("query, kept", [
    ("dreamshaper 7 sd15", "dreamshaper 7"), ("photon mix sd1 5", "photon mix"), ("photon mix sd 1 5", "photon mix"),
    ("dreamshaper sd15 7", "dreamshaper 7"), ("juggernaut xl v8 sdxl", "juggernaut v8"),
    ("photon mix 5", "photon mix 5"), ("xl", "xl"), ("pony diffusion v6 xl", "pony diffusion v6"),
])  # fmt: skip
def test_a_query_is_also_read_without_its_family_words(query, kept):
    assert " ".join(families.without_family_words(query.split())) == kept


def test_the_numbers_of_a_base_models_spelling_are_not_a_version():
    models = [M("v5", "Photon Mix V5/Pruned", 1000), M("v3", "Photon Mix V3", 1000)]
    for query in ("photon mix sd1.5", "photon mix sd 1.5"):
        assert isinstance(decide(query, models), list), query  # as "photon mix" alone: both are look-alikes


def test_a_year_is_not_a_version_number():
    assert match._numbers("realistic vision 2024") == set() and match._numbers("photon mix v5") == {"5"}


def test_candidates_leave_out_the_reuploads_of_a_listed_model(registry_db, serve):
    """Strangers' "majicMIX lux XL 123" and "majicMIXlux_noir_7" are not more choices beside majicMIX lux: the
    list shows the models themselves, and a look-alike that is no extension of one stays."""
    eval_world.build(registry_db, serve)
    reg = registry_layer.open(registry_db)
    from crawler.registry.schema import Model, table_of
    from crawler.registry.upsert import upsert

    fillers = ["majicMIX lux XL 12546", "majicMIXlux_noir_7", "majicMIX lux fp16 5564", "majicMIX sombre 2.0 2692",
               "majicMIX realistic Mix 3", "majicMIX realistic Lite 4"]  # fmt: skip
    with reg.engine.begin() as conn:
        upsert(conn, table_of(Model), [
            {"id": f"civitai:{9_000_000 + i}", "source": "civitai", "source_id": str(9_000_000 + i), "name": n,
             "name_norm": normalize_name(n), "type": "Checkpoint", "creator": "stranger", "tags": "[]", "nsfw": False,
             "mode": None, "base_model": "SD 1.5", "family": "sd1", "is_inpainting": False, "has_inpainting": False,
             "updated_at": None, "content_hash": "", "downloads": 2000} for i, n in enumerate(fillers)])  # fmt: skip
    listed = lookup("majicmix", db=registry_db, offline=True).candidates
    assert {c.model_id for c in listed[:4]} == {"civitai:56967", "civitai:62778", "civitai:41865", "civitai:43331"}
    assert not any(c.model_id.startswith("civitai:9000") for c in listed)
    with reg.engine.begin() as conn:  # the creator's own model named after another of theirs is a model of its own
        upsert(conn, table_of(Model), [{
            "id": "civitai:9000100", "source": "civitai", "source_id": "9000100", "name": "majicMIX lux XL",
            "name_norm": "majicmix lux xl", "type": "Checkpoint", "creator": "Merjic", "tags": "[]", "nsfw": False,
            "mode": None, "base_model": "SDXL 1.0", "family": "sdxl", "is_inpainting": False,
            "has_inpainting": False, "updated_at": None, "content_hash": "", "downloads": 900}])  # fmt: skip
    assert "civitai:9000100" in {c.model_id for c in lookup("majicmix", db=registry_db, offline=True).candidates}


def test_a_family_word_the_name_says_too_is_set_aside_on_both_sides(registry_db, serve):
    """"dreamshaper sdxl" is DreamShaper XL, not a stranger's SDXL "DreamShaper 2.0 1566" whose name, its numbers
    aside, is "dreamshaper": with the family word the query and the name share set aside, both are
    "dreamshaper", and the model with 300x the downloads is meant."""
    eval_world.build(registry_db, serve)
    reg = registry_layer.open(registry_db)
    from crawler.registry.schema import Model, table_of
    from crawler.registry.upsert import upsert

    fillers = ["DreamShaper 2.0 1566", "DreamShaper v2 9796", "DreamShaper 2.0 4100"]
    with reg.engine.begin() as conn:
        upsert(conn, table_of(Model), [
            {"id": f"civitai:{9_100_000 + i}", "source": "civitai", "source_id": str(9_100_000 + i), "name": n,
             "name_norm": normalize_name(n), "type": "Checkpoint", "creator": "stranger", "tags": "[]", "nsfw": False,
             "mode": None, "base_model": "SDXL 1.0", "family": "sdxl", "is_inpainting": False,
             "has_inpainting": False, "updated_at": None, "content_hash": "", "downloads": 2000}
            for i, n in enumerate(fillers)])  # fmt: skip
    assert lookup("dreamshaper sdxl", db=registry_db, offline=True).match.model_id == "civitai:112902"
    assert lookup("majicmix realistic sdxl", db=registry_db, offline=True).match is None  # no SDXL majicMIX
