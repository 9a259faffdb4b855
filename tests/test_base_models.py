"""Every base model Civitai lists, answered for what it is: Civitai's own list (a dated copy in data/) says
which are images, video, audio or 3D; the families in data/ say what inpaint-advisor knows of the images."""

import random
from datetime import datetime

import pytest

from crawler import civitai, families, registry
from crawler.http import RetryPolicy
from crawler.registry.stats import registry_status
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
    return item


# "T2V" as an item may write it (Civitai's list says "t2v": strings compare case-insensitively)
BASES = {910001: "Wan Video 14B T2V", 910002: "Trellis.2", 910003: "Other", 910004: "Hyper Future 9000",
         910005: "ACE Audio"}  # fmt: skip


@pytest.fixture
def crawled(registry_db, serve):
    url = serve(FakeCivitai([_item(i, base) for i, base in BASES.items()]))
    civitai.crawl(registry.connect(registry_db), base_url=url, policy=FAST)
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


def test_an_image_base_model_without_data_is_the_tools_gap():
    from advisor.advice import ladder
    from tests.ladder_facts import releases

    listed = next(b["name"] for b in LISTED["base_models"]
                  if b["media"] == "image" and families.family_for_base_model(b["name"]) is None)  # fmt: skip
    rec, _, _ = ladder.recommend(ladder.Subject("X", None, base_model=listed), releases("X", {}))
    assert rec.kind == "none" and "a gap of this tool, not of your model" in rec.reason


def test_status_tells_gaps_from_models_that_are_not_images(crawled):
    from io import StringIO

    from rich.console import Console

    from advisor.cli import render

    st = registry_status(registry.connect(crawled))
    assert sorted(st.unknown_base_models) == [("Hyper Future 9000", 2), ("Other", 2)]  # versions, two each
    assert sorted(st.not_image_base_models) == [("ACE Audio", "audio", 2), ("Trellis.2", "3d", 2),
                                                ("Wan Video 14B T2V", "video", 2)]  # fmt: skip
    out = StringIO()
    render.registry_status(Console(file=out, width=200), st)
    text = out.getvalue()
    assert "a gap of the tool" in text and "not image checkpoints" in text and "data/families.json" not in text
