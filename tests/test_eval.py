"""The lookup evaluation: every labelled query of tests/fixtures/eval/queries.json answered as a careful person
would (model, version, recommendation kind, or the close candidates), over a registry crawled from real names
and the look-alikes strangers upload; on both engines. benchmarks/bench_match.py prints the same score, also
among 200,000 models."""

import re

from advisor.advice.lookup import lookup
from crawler import families
from crawler.registry import normalize_name
from tests import eval_world


def test_every_labelled_query_is_answered_as_meant(registry_db, serve):
    eval_world.build(registry_db, serve)
    misses = []
    for q in eval_world.queries():
        miss = eval_world.judge(q, lookup(q["q"], db=registry_db, offline=True))
        if miss is not None:
            misses.append(miss.line())
    assert not misses, f"{len(misses)} of {len(eval_world.queries())} queries missed:\n" + "\n".join(misses)


def test_the_set_covers_every_kind_of_query():
    qs = eval_world.queries()
    texts = [q["q"] for q in qs]
    assert len(qs) >= 300 and len(set(texts)) == len(texts)
    kinds = {
        "civitai.com URL": sum("civitai.com/" in t for t in texts),
        "civitai.red URL": sum("civitai.red/" in t for t in texts),
        "hash": sum(bool(re.fullmatch(r"[0-9a-fA-F]{8,64}", t)) for t in texts),
        "file name": sum(t.endswith((".safetensors", ".ckpt")) for t in texts),
        "Hub repo": sum((q["model"] or "").startswith("hf:") for q in qs),
        "family": sum((q["model"] or "").startswith("family:") for q in qs),
        "a version named": sum("version" in q and " " in q["q"] and "://" not in q["q"] for q in qs),
        "ambiguous": sum("candidates" in q for q in qs),
        "AIR": sum(t.startswith("urn:air:") for t in texts),
        "family word": sum(families.asked_families(normalize_name(t).split()) is not None for t in texts),
        "unknown name": sum(q["model"] is None and "candidates" not in q for q in qs),
    }
    assert all(n >= 3 for n in kinds.values()), kinds
    # look-alikes: every popular model has its same-name re-upload and variants in the catalogue
    cat = eval_world.catalogue()
    fakes = eval_world.lookalikes(cat["models"], cat["lookalikes"])
    assert len(fakes) >= 15 * len(cat["lookalikes"]["popular"])
