"""Every base model Civitai lists, answered for what it is: Civitai's own list (a dated copy in data/) says
which are images, video, audio or 3D; the families in data/ say what inpaint-advisor knows of the images."""

import random
from datetime import datetime

import pytest

from crawler import civitai, families, registry
from crawler.http import RetryPolicy
from data import load
from tests.civitai_fake import FakeCivitai, synthetic_item

FAST = RetryPolicy(attempts=2, base_delay=0.001, max_delay=0.01)
LISTED = load("civitai_base_models")


def test_the_copy_of_civitais_list_is_whole_and_dated():
    names = [b["name"] for b in LISTED["base_models"]]
    assert len(names) == len(set(names)) == 107  # baseModelRecords at the commit recorded
    assert len(LISTED["source"]["commit"]) == 40 and LISTED["source"]["read_on"]
    assert LISTED["default_base_model"] == "Anima" and "Anima" in names
    media = {b["name"]: b["media"] for b in LISTED["base_models"]}
    assert media["SDXL 1.0"] == "image" and media["Wan Video 14B t2v"] == "video" and media["SVD XT"] == "video"
    assert media["ACE Audio"] == "audio" and media["Trellis.2"] == "3d" and media["Other"] == "other"


def test_every_base_model_a_family_claims_is_one_civitai_lists():
    """A family's base model strings are Civitai's (a typo in data/ would never match an item)."""
    claimed = {bm for fam in families.all_families() for bm in fam["civitai_base_models"]}
    assert sorted(bm for bm in claimed if families.civitai_base_model(bm) is None) == []
    # a family makes what Civitai says its base models make (Stable Video Diffusion: video)
    assert [(fam["id"], bm) for fam in families.all_families() for bm in fam["civitai_base_models"]
            if families.civitai_base_model(bm)["media"] != fam.get("media", "image")] == []  # fmt: skip


def test_a_video_family_is_not_an_image_checkpoint():
    from advisor.advice.lookup import lookup

    answer = lookup("SVD XT", offline=True)  # the family by its Civitai name
    rec = answer.recommendation
    assert rec.kind == "none" and "a video model, not an image checkpoint" in rec.reason


def _item(model_id: int, base: str) -> dict:
    item = synthetic_item(model_id, random.Random(model_id), datetime(2026, 1, 1))
    item["name"] = f"Model on {base}"
    for version in item["modelVersions"]:
        version["baseModel"] = base
        version["baseModelType"] = "Standard"
        version["name"] = version["name"].replace("-inpainting", "")
        for f in version["files"]:
            f["name"] = f["name"].replace("-inpainting", "")
    item["tags"] = [t for t in item["tags"] if t != "inpainting"]
    return item


# "T2V" as an item may write it (Civitai's list says "t2v": strings compare case-insensitively)
BASES = {910001: "Wan Video 14B T2V", 910002: "Trellis.2", 910003: "Other", 910004: "Hyper Future 9000",
         910005: "ACE Audio"}  # fmt: skip


ENUMS = [b["name"] for b in LISTED["base_models"]] + ["Future Image 5"]  # Civitai's list, one newer name


@pytest.fixture
def crawled(registry_db, serve):
    url = serve(FakeCivitai([_item(i, base) for i, base in BASES.items()], enums=ENUMS))
    summary = civitai.crawl(registry.open(registry_db), base_url=url, policy=FAST)
    assert summary.new_base_models == ["Future Image 5"]  # read from /api/v1/enums, compared with the copy
    # the summary's "unknown base models" are the tool's gaps: not the video, audio and 3D ones it knows as such
    assert not summary.unknown_base_models & {"Wan Video 14B T2V", "ACE Audio", "Trellis.2"}
    assert "Hyper Future 9000" in summary.unknown_base_models
    return registry_db


def test_models_that_are_not_image_checkpoints_are_answered_as_such(crawled):
    from advisor.advice.lookup import lookup

    video = lookup("civitai:910001", db=crawled, offline=True)
    assert video.recommendation.kind == "none"
    assert "Wan Video 14B T2V is a video model on Civitai" in video.recommendation.reason
    assert "not an image checkpoint" in video.recommendation.reason
    assert not any("bundled data" in w for w in video.warnings)  # known to Civitai's list: no "add it" hint
    assert "a 3D model generator" in lookup("civitai:910002", db=crawled, offline=True).recommendation.reason
    assert "an audio model" in lookup("civitai:910005", db=crawled, offline=True).recommendation.reason


def test_other_and_unlisted_base_models_point_at_the_tensors(crawled):
    from advisor.advice.lookup import lookup

    other = lookup("civitai:910003", db=crawled, offline=True).recommendation.reason
    assert '"Other"' in other and "inpaint-advisor probe FILE" in other
    unlisted = lookup("civitai:910004", db=crawled, offline=True)
    assert "not in Civitai's list" in unlisted.recommendation.reason
    assert any("not in the bundled data yet" in w for w in unlisted.warnings)


def _without_data(listed: dict) -> bool:
    name = listed["name"]
    return listed["media"] == "image" and families.family_for_base_model(name) is None and \
        not families.api_only(name) and not families.not_an_image_model(name)  # fmt: skip


def test_an_image_base_model_without_data_is_the_tools_gap(monkeypatch):
    from advisor.advice import ladder
    from tests.ladder_facts import releases

    future = {"name": "Future Image 5", "media": "image", "ecosystem": "Future", "parent": None, "hidden": False}
    monkeypatch.setattr(families, "civitai_base_model", lambda name: future if name == "Future Image 5" else None)
    rec, _, _ = ladder.recommend(ladder.Subject("X", None, base_model="Future Image 5"), releases("X", {}))
    assert rec.kind == "none" and "a gap of this tool, not of your model" in rec.reason
    joke, _, _ = ladder.recommend(ladder.Subject("X", None, base_model="ODOR"), releases("X", {}))
    assert joke.kind == "none" and "April Fools'" in joke.reason and "not an image checkpoint" in joke.reason


def test_status_tells_gaps_from_models_that_are_not_images(crawled):
    from io import StringIO

    from rich.console import Console

    from advisor.cli import render

    st = registry.open(crawled).status()
    assert sorted(st.unknown_base_models) == [("Hyper Future 9000", 2), ("Other", 2)]  # versions, two each
    assert sorted(st.not_image_base_models) == [("ACE Audio", "audio", 2), ("Trellis.2", "3d", 2),
                                                ("Wan Video 14B T2V", "video", 2)]  # fmt: skip
    assert st.unknown_examples["Other"] == ["Model on Other"]  # which models, not only how many
    assert st.civitai_lists_unknown == ["Future Image 5"]
    out = StringIO()
    render.registry_status(Console(file=out, width=200), st)
    text = " ".join(out.getvalue().split())  # as read, whatever the line breaks
    assert "a gap of the tool" in text and "not image checkpoints" in text and "data/families.json" not in text
    assert "Other: 2 versions (e.g. Model on Other)" in text and "Future Image 5" in text


def test_status_check_reports_the_gaps_without_failing_on_them(crawled):
    from datetime import timedelta

    from crawler import health

    report = health.check(registry.open(crawled), timedelta(days=1))
    assert "Civitai lists base model Future Image 5, which this release does not know" in report.gaps
    assert any(g.startswith("no data for base model Hyper Future 9000: 2 versions") for g in report.gaps)
    assert not any("Future" in r for r in report.reasons)  # a gap of the tool is not an unhealthy registry


def test_every_image_base_model_civitai_lists_is_answered_by_the_data():
    """A family (with its routes), an API-only entry or (ODOR, a joke) no model at all, for each."""
    unanswered = [b["name"] for b in LISTED["base_models"] if _without_data(b)]
    assert unanswered == []
    for fam in families.all_families():
        if fam["id"] in ("anima", "flux2-klein-4b", "hidream-o1", "ernie-image", "qwen-image-2.1", "flux1-kontext"):
            assert fam["sources"] and all(u.startswith("https://") for u in fam["sources"]), fam["id"]


def test_an_api_only_base_model_says_there_are_no_weights():
    from advisor.advice import ladder

    rec, alts, _ = ladder.recommend(ladder.Subject("Some Nano Banana thing", None, base_model="Nano Banana"))
    assert rec.kind == "none" and alts == []
    assert "served only through its maker's API" in rec.reason and "no weights to inpaint with" in rec.reason


def _ranked(family: str, name: str = "my model") -> list[str]:
    from advisor.advice import ladder

    rec, alts, _ = ladder.recommend(ladder.Subject(name, family))
    return [r.route or r.kind for r in [rec, *alts]]


def test_todays_families_get_their_routes_in_order():
    assert _ranked("anima")[0] == "anima-lllite-inpainting"
    assert _ranked("flux2-klein-4b")[:2] == ["flux2-klein-editing", "flux2-klein-outpaint-lora"]
    assert _ranked("flux2-klein-9b")[0] == "flux2-klein-editing" and "flux2-klein-outpaint-lora" not in _ranked(
        "flux2-klein-9b")  # the LoRA is for the 4B model
    assert _ranked("z-image")[0] == "z-image-fun-controlnet"
    assert _ranked("qwen-image")[:2] == ["qwen-image-controlnet-inpainting", "qwen-image-edit"]


def test_a_kontext_fine_tune_is_sent_to_kontext_editing_not_to_fill():
    from advisor.advice import ladder

    assert families.family_for_base_model("Flux.1 Kontext") == "flux1-kontext"
    rec, alts, warnings = ladder.recommend(ladder.Subject("my Kontext fine-tune", "flux1-kontext"))
    assert rec.route == "flux-kontext" and not any(a.kind in ("official", "build") for a in alts)
    assert any("Kontext model, which edits by itself" in w for w in warnings)
    assert _ranked("flux1")[0] == "official"  # a FLUX.1 [dev] fine-tune still gets FLUX.1 Fill


def test_the_route_files_krita_pins_carry_their_sha256():
    routes = {r["id"]: r for r in load("routes")["routes"]}
    pinned = {f["file"]: f["sha256"] for rid in ("fooocus-inpaint", "controlnet-union-promax", "noobai-inpainting",
                                                  "flux-controlnet-inpainting", "z-image-fun-controlnet")
              for f in routes[rid]["files"] if f["file"].endswith((".pth", ".safetensors"))}  # fmt: skip
    assert all(pinned.values()) and len(pinned) == 5
    assert "hides inpainting checkpoints" in load("routes")["checkpoints"]["how"]["*"]


def test_a_registry_crawled_before_a_family_was_known_gets_it_on_upgrade(registry_db):
    from sqlalchemy import text
    from sqlmodel import Session

    from crawler.registry.engine import forget
    from crawler.registry.schema import Model, Version

    reg = registry.open(registry_db)
    with Session(reg.engine) as session:  # as a crawl with data that knew no Anima stored them
        session.add(Model(id="civitai:77", source="civitai", source_id="77", name="Old Anima Mix",
                          name_norm="old anima mix", base_model="Anima", family=None))  # fmt: skip
        session.commit()
        session.add(Version(id="civitai:v770", model_id="civitai:77", source_id="770", name="v1",
                            base_model=" anima ", family=None, position=0))  # fmt: skip
        session.commit()
    with reg.engine.begin() as conn:
        conn.execute(text("UPDATE meta SET value = 'crawled with older data' WHERE key = 'families'"))
    forget(registry_db)
    with registry.open(registry_db).engine.connect() as conn:
        assert conn.execute(text("SELECT family FROM model WHERE id = 'civitai:77'")).scalar_one() == "anima"
        assert conn.execute(text("SELECT family FROM version WHERE id = 'civitai:v770'")).scalar_one() == "anima"


def test_one_checkpoint_per_base_model_civitai_lists_is_answered_for_what_it_is(registry_db, serve):
    """A fake Civitai with a model on each of Civitai's 107 base models: every one gets the answer its base model
    deserves (a family's, an API-only brand's, not an image checkpoint's, or the tool's gap), never a traceback."""
    from advisor.advice.lookup import lookup

    listed = LISTED["base_models"]
    items = [_item(920000 + i, b["name"]) for i, b in enumerate(listed)]
    civitai.crawl(registry.open(registry_db), base_url=serve(FakeCivitai(items)), policy=FAST)
    for i, b in enumerate(listed):
        answer = lookup(f"civitai:{920000 + i}", db=registry_db, offline=True)
        rec, fam = answer.recommendation, families.family_for_base_model(b["name"])
        assert answer.match is not None and rec is not None, b["name"]
        if b["media"] not in ("image", "other"):
            assert rec.kind == "none" and "not an image checkpoint" in rec.reason, b["name"]
        elif fam is not None:
            assert answer.match.family == fam, b["name"]
            assert rec.kind != "none" or "media" in families.family(fam) or "no known route" in rec.reason, b["name"]
        elif families.api_only(b["name"]):
            assert "served only through its maker's API" in rec.reason, b["name"]
        elif families.not_an_image_model(b["name"]):  # ODOR: Civitai's April Fools' "text-to-scent model"
            assert rec.kind == "none" and "not an image checkpoint" in rec.reason, b["name"]
        elif b["media"] == "other":
            assert "inpaint-advisor probe FILE" in rec.reason, b["name"]
        else:
            assert "a gap of this tool" in rec.reason, b["name"]


def test_a_video_model_is_never_sent_to_an_image_inpainting_release():
    from advisor.advice import ladder
    from tests.ladder_facts import releases

    subject = ladder.Subject("Some LTXV mix", None, base_model="LTXV", model_id="civitai:1", version_id="civitai:v2")
    rec, alts, _ = ladder.recommend(subject, releases("Some LTXV mix", {"v2": 0.9}))
    assert rec.kind == "none" and "a video model" in rec.reason and alts == []
