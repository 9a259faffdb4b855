"""Text both engines can store: what a source sends (a NUL byte, a lone surrogate) is made storable on the way
into the registry, the same on SQLite and PostgreSQL, and the crawl goes on."""

import copy
import json

from sqlalchemy import text

from crawler import civitai, registry
from crawler.http import RetryPolicy
from crawler.registry.storable import storable
from tests.civitai_fake import FakeCivitai, load_fixture

FAST = RetryPolicy(attempts=2, base_delay=0.001, max_delay=0.01)
TABLES = {"model": ("id", "name", "name_norm", "creator", "tags"), "version": ("id", "name"),
          "file": ("id", "name")}  # fmt: skip


def hostile_items() -> list[dict]:
    """The fixture with a NUL in a model name, a version name, a file name, a tag and a creator name, and a
    lone surrogate (no UTF-8 for it) in another model's name and a version name."""
    items = copy.deepcopy(load_fixture())
    first, second = [i for i in items if i["type"] == "Checkpoint"][:2]
    first["name"] = "Nul\x00Model"
    first["creator"]["username"] = "cre\x00ator"
    first["tags"] = ["ta\x00g", *first["tags"]]
    first["modelVersions"][0]["name"] = "v\x007"
    first["modelVersions"][0]["files"][0]["name"] = "nul\x00file.safetensors"
    second["name"] = "Lone \ud800 Surrogate"
    second["modelVersions"][0]["name"] = "v\udfff1"
    return items


def stored(reg) -> dict:
    with reg.engine.connect() as conn:
        return {t: sorted(tuple(r) for r in conn.execute(text(f"SELECT {', '.join(cols)} FROM {t}")).all())
                for t, cols in TABLES.items()}  # fmt: skip


def test_storable_drops_nul_and_replaces_lone_surrogates():
    assert storable("a\x00b") == "ab" and storable("x\ud800y\udfffz") == "x\ufffdy\ufffdz"
    assert storable("plain é 麦") == "plain é 麦" and storable("a\x00\ud83d") == "a\ufffd"
    assert storable("😀") == "😀"  # a proper pair is one character, not two surrogates


def test_a_crawl_of_nul_bytes_and_lone_surrogates_stores_every_model_alike_on_both_engines(registry_db, serve,
                                                                                              tmp_path):  # fmt: skip
    items = hostile_items()
    checkpoints = [i for i in items if i["type"] == "Checkpoint"]
    summary = civitai.crawl(registry.open(registry_db), base_url=serve(FakeCivitai(items)), policy=FAST)
    reg = registry.open(registry_db)
    assert summary.status == "ok" and summary.models == len(checkpoints)
    rows = stored(reg)
    assert len(rows["model"]) == len(checkpoints)
    assert len(rows["version"]) == sum(len(i["modelVersions"]) for i in checkpoints)
    everything = json.dumps(rows, ensure_ascii=False)
    assert "\x00" not in everything and "\\u0000" not in everything
    models = {r[0]: r for r in rows["model"]}
    first, second = (f"civitai:{i['id']}" for i in checkpoints[:2])
    assert models[first][1] == "NulModel" and models[first][3] == "creator"
    assert "tag" in json.loads(models[first][4])
    assert models[second][1] == "Lone \ufffd Surrogate"
    names = {r[1] for r in rows["version"]} | {r[1] for r in rows["file"]}
    assert {"v7", "v\ufffd1", "nulfile.safetensors"} <= names
    # the same text on both engines: a SQLite registry crawled from the same fake is the reference
    reference = registry.open(str(tmp_path / "reference.db"))
    civitai.crawl(reference, base_url=serve(FakeCivitai(hostile_items())), policy=FAST)
    assert stored(reference) == rows
