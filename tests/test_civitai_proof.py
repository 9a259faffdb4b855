"""Proof from the file where a Civitai version's metadata is ambiguous: the crawl reads the primary file's
safetensors header with range requests through the download redirect (the token to Civitai only), decides by
the UNet's input channels, records the proof by hash and relinks; unreadable files keep the metadata verdict
at a lower confidence; everything else is never fetched."""

import json

import pytest

from advisor.advice.lookup import lookup
from crawler import civitai, detect
from crawler import registry as registry_layer
from crawler.http import RetryPolicy
from tests.civitai_fake import FakeCivitai
from tests.eval_world import item, version_id
from tests.hf_fake import sd_file
from tests.storage_fake import Blob, FakeStorage, StorageServer

FAST = RetryPolicy(attempts=2, base_delay=0.001)
TOKEN = "civitai-s3cret-token"

# (model spec, {version position: (family, variant) of its real file, or a Blob for a broken one})
CASES = [
    # named and tagged inpainting, its version says nothing: the file proves it is one
    ({"id": 700, "name": "MagicPaint", "downloads": 900, "tags": ["inpainting"],
      "versions": [["v1", "SD 1.5", "Standard", "magicpaint_v1.safetensors"]]}, {0: ("sd1", "inpaint")}),
    # tagged inpainting, a plain version (ambiguous, proven normal) beside a clear inpainting one (never read)
    ({"id": 701, "name": "DreamPaint", "downloads": 800, "tags": ["inpainting", "anime"],
      "versions": [["8", "SD 1.5", "Standard", "dreampaint_8.safetensors"],
                   ["8 Inpainting", "SD 1.5", "Inpainting", "dreampaint_8Inpainting.safetensors"]]},
     {0: ("sd1", "normal"), 1: ("sd1", "inpaint")}),
    # typed Inpainting, its names say nothing: in fact a normal checkpoint
    ({"id": 702, "name": "Mislabelled", "downloads": 700, "tags": [],
      "versions": [["v2", "SDXL 1.0", "Inpainting", "mislabelled_v2.safetensors"], ["v1", "SDXL 1.0", "Standard"]]},
     {0: ("sdxl", "normal")}),
    # an "-inp" name typed Standard: the file proves the name right
    ({"id": 703, "name": "RealToon", "downloads": 600, "tags": [],
      "versions": [["v1.2.1-inp", "SD 1.5", "Standard", "realtoon_v121-inp.safetensors"], ["v1.2.1", "SD 1.5"]]},
     {0: ("sd1", "inpaint")}),
    # tagged inpainting, its download answers with a JSON error: the metadata verdict stays, less sure
    ({"id": 704, "name": "Walled Inpainting", "downloads": 500, "tags": ["inpainting"],
      "versions": [["v1", "SD 1.5", "Standard", "walled_v1.safetensors"]]},
     {0: Blob(b'{"error":"no access"}', content_type="application/json")}),
    # nothing ambiguous: never fetched
    ({"id": 705, "name": "Plain Model", "downloads": 400, "tags": ["photorealistic"],
      "versions": [["v3", "SD 1.5", "Standard", "plain_v3.safetensors"]]}, {0: ("sd1", "normal")}),
]


@pytest.fixture
def world(registry_db, serve):
    storage = FakeStorage()
    with StorageServer(storage) as storage_url:
        fake = FakeCivitai([item(spec, i) for i, (spec, _) in enumerate(CASES)], duplicate_at_boundary=False)
        for spec, files in CASES:
            for pos, content in files.items():
                vid = str(version_id(spec["id"], pos))
                storage.blobs[vid] = content if isinstance(content, Blob) else Blob(sd_file(*content) + b"\0" * 4096)
                fake.downloads[vid] = (f"{storage_url}/blob/{vid}?X-Amz-Signature=abc", True)
        url = serve(fake)
        yield fake, storage, url, registry_db


def crawl(world, **kw):
    fake, _, url, db = world
    return civitai.crawl(registry_layer.open(db), base_url=url, token=TOKEN, policy=FAST, **kw)


def verdict(db, model_id: int, pos: int):
    with registry_layer.open(db, "lookup") as reader:
        v = next(v for v in reader.versions(f"civitai:{model_id}") if v.id == f"civitai:v{version_id(model_id, pos)}")
        conf = reader.row("SELECT inpaint_confidence FROM version WHERE id = %(id)s", id=v.id)[0]
    return v.is_inpainting, conf, v.evidence


def test_ambiguous_versions_are_decided_by_their_files_headers(world):
    fake, storage, _, db = world
    summary = crawl(world)
    assert summary.headers_read == 5 and summary.proofs_changed == 2 and summary.proofs_unreadable == 1

    is_inp, conf, evidence = verdict(db, 700, 0)  # the metadata alone could not tell
    assert is_inp and conf == detect.PROOF and "9 input channels" in evidence[0]
    assert verdict(db, 701, 0)[0] is False and "not an inpainting model" in verdict(db, 701, 0)[2][0]
    assert verdict(db, 702, 0)[0] is False  # typed Inpainting, but a normal UNet
    assert verdict(db, 703, 0)[0] is True and verdict(db, 703, 0)[1] == detect.PROOF
    # unreadable: the metadata's verdict (the model name and tag say inpainting) kept, at a lower confidence
    is_inp, conf, evidence = verdict(db, 704, 0)
    assert is_inp and detect.THRESHOLD <= conf < 0.8 and "could not be read" in evidence[-1]

    # bounded: only the ambiguous versions' files, a header's worth each, the token never to the storage host
    read = sorted(r["path"].split("?")[0].rsplit("/", 1)[-1] for r in storage.requests)
    assert read == sorted(str(version_id(m, 0)) for m in (700, 701, 702, 703, 704))
    assert all(r["range"] == "bytes=0-524287" and r["authorization"] is None for r in storage.requests)
    assert fake.auth_headers.count(f"Bearer {TOKEN}") >= 5  # ...but to Civitai's download URL
    with registry_layer.open(db, "lookup") as reader:
        keys = {r[0] for r in reader.rows("SELECT key FROM headerproof")}
        sha = reader.row("SELECT sha256 FROM file WHERE version_id = 'civitai:v7000'")[0]
    assert sha in keys and len(keys) == 5  # by the file's hash


def test_proofs_move_links_and_answers(world):
    _, _, _, db = world
    crawl(world)
    r = lookup("MagicPaint", db=db, offline=True)
    assert r.recommendation.kind == "already-inpainting"
    assert any("header proves" in e for e in r.recommendation.evidence)
    r = lookup("RealToon", db=db, offline=True)  # the -inp version, proven, is its own release
    assert r.recommendation.kind == "own-release" and "v1.2.1-inp" in r.recommendation.target.name
    r = lookup("Mislabelled", db=db, offline=True)  # its newest version is not inpainting after all
    assert r.match.version_name == "v2" and r.recommendation.kind != "already-inpainting"
    with registry_layer.open(db, "lookup") as reader:
        assert reader.model("civitai:702").has_inpainting is False and reader.model("civitai:700").is_inpainting


def test_a_file_is_read_once_and_its_proof_survives_a_recrawl(world):
    fake, storage, _, db = world
    crawl(world)
    before = len(storage.requests)
    for it in fake.items:  # every model changed at the source: re-parsed from metadata, rewritten
        it["description"] = "<p>new</p>"
        it["name"] += " "
    fake._cache.clear()
    summary = crawl(world)
    assert summary.written == len(CASES) and summary.headers_read == 0 and len(storage.requests) == before
    assert verdict(db, 700, 0)[0] is True and verdict(db, 702, 0)[0] is False


def proof_keys(db) -> set[str]:
    with registry_layer.open(db, "lookup") as reader:
        return {r[0] for r in reader.rows("SELECT key FROM headerproof")}


def last_run(db) -> dict:
    with registry_layer.open(db, "lookup") as reader:
        row = reader.row("SELECT status, errors, first_errors, headers_read, headers_unreadable, headers_deferred "
                         "FROM crawlrun ORDER BY id DESC LIMIT 1")  # fmt: skip
    keys = ("status", "errors", "first_errors", "read", "unreadable", "deferred")
    return dict(zip(keys, row[:2] + (json.loads(row[2] or "[]"),) + tuple(row[3:]), strict=True))


def sha_of(db, vid: int) -> str:
    with registry_layer.open(db, "lookup") as reader:
        return reader.row("SELECT sha256 FROM file WHERE version_id = %(id)s", id=f"civitai:v{vid}")[0]


@pytest.mark.parametrize("trouble", ["503", "dropped connection"])
def test_a_storage_in_trouble_defers_the_proof_to_the_next_crawl(world, trouble):
    """A 503, or a connection dropped inside the header: the file was not read, so nothing is recorded and the
    version keeps its metadata verdict untouched; the next crawl reads it."""
    _, storage, _, db = world
    if trouble == "503":
        storage.blobs["7000"].status = 503
    else:
        storage.blobs["7000"].drop_after = 100  # once: a few bytes of the header, then the connection goes
    summary = crawl(world)
    # 704's JSON page was read (and is not a checkpoint); 7000 was not read at all
    assert (summary.headers_read, summary.proofs_unreadable, summary.proofs_deferred) == (4, 1, 1)
    assert sha_of(db, 7000) not in proof_keys(db) and len(proof_keys(db)) == 4
    is_inp, conf, evidence = verdict(db, 700, 0)
    assert not any("header" in e or "could not be read" in e for e in evidence)
    # the error is named: the download URL asked (not the signed storage URL), and why
    assert summary.errors == 1 and summary.first_errors[0].url.endswith("/api/download/models/7000?fileId=70000")
    reason = summary.first_errors[0].reason
    assert ("HTTP 503" in reason if trouble == "503" else "dropped" in reason) and "next crawl" in reason
    assert last_run(db) == {"status": "ok", "errors": 1, "first_errors": [
        {"source": "civitai", "url": summary.first_errors[0].url, "reason": reason}],
        "read": 4, "unreadable": 1, "deferred": 1}  # fmt: skip
    storage.blobs["7000"].status = None
    summary = crawl(world)
    assert (summary.headers_read, summary.proofs_deferred, summary.errors) == (1, 0, 0)
    assert verdict(db, 700, 0)[:2] == (True, detect.PROOF) and sha_of(db, 7000) in proof_keys(db)


def test_a_download_that_is_gone_is_recorded_once_and_named(world):
    fake, _, _, db = world
    del fake.downloads["7000"]  # Civitai answers 404
    summary = crawl(world)
    assert (summary.headers_read, summary.proofs_unreadable, summary.proofs_deferred) == (5, 2, 0)
    assert summary.errors == 1 and "HTTP 404: the download is gone" in summary.first_errors[0].reason
    assert "could not be read" in verdict(db, 700, 0)[2][-1] and sha_of(db, 7000) in proof_keys(db)
    asked = lambda: sum(r["path"] == "/api/download/models/7000" for r in fake.requests)  # noqa: E731
    before = asked()
    again = crawl(world)
    assert again.headers_read == 0 and again.errors == 0 and asked() == before  # not asked again


def test_a_file_whose_creator_disabled_downloads_is_recorded_once_and_named(world):
    from tests.civitai_fake import DISABLED

    fake, _, _, db = world
    fake.downloads["7000"] = (DISABLED, False)  # 401 "The creator has disabled downloads on this file"
    summary = crawl(world)
    assert summary.proofs_deferred == 0 and summary.errors == 1  # no key would read it: not asked again
    assert "the creator has disabled downloads of this file" in summary.first_errors[0].reason
    assert sha_of(db, 7000) in proof_keys(db)
    assert crawl(world).errors == 0


def test_without_an_api_key_nothing_is_proven_and_a_crawl_with_one_reads_them(world, monkeypatch):
    """Civitai answers 401 to a download without a key: those files are not read, so no proof (failed or
    otherwise) is stored and the summary says they wait; a crawl with the key reads them all."""
    from tests.conftest import cli_env, run_cli

    fake, storage, url, db = world
    monkeypatch.delenv("CIVITAI_API_TOKEN", raising=False)
    result = run_cli("crawl", "civitai", "--db", db, "--url", url, "--json", env=cli_env())
    assert result.returncode == 0, result.stderr
    first = json.loads(result.stdout)
    assert (first["headers_read"], first["proofs_unreadable"], first["proofs_deferred"]) == (0, 0, 5)
    assert not storage.requests and not proof_keys(db)  # nothing read, nothing recorded
    assert first["errors"] == 5 and len(first["first_errors"]) == 5
    assert all(e["source"] == "civitai" and "/api/download/models/" in e["url"] and "HTTP 401" in e["reason"]
               and "CIVITAI_API_TOKEN" in e["reason"] for e in first["first_errors"])  # fmt: skip
    record = last_run(db)
    assert (record["read"], record["unreadable"], record["deferred"], record["errors"]) == (0, 0, 5, 5)
    assert record["first_errors"] == first["first_errors"]
    assert not any("header" in e or "could not be read" in e for e in verdict(db, 700, 0)[2])

    second = crawl(world)  # with the key
    assert (second.headers_read, second.proofs_unreadable, second.proofs_deferred) == (5, 1, 0)
    assert verdict(db, 700, 0)[:2] == (True, detect.PROOF) and len(proof_keys(db)) == 5
    assert last_run(db)["deferred"] == 0 and last_run(db)["read"] == 5


def test_the_table_counts_read_unreadable_and_not_read_apart(world, monkeypatch):
    from tests.conftest import cli_env, run_cli

    _, _, url, db = world
    monkeypatch.delenv("CIVITAI_API_TOKEN", raising=False)
    out = run_cli("crawl", "civitai", "--db", db, "--url", url, env=cli_env(COLUMNS="200"))
    assert out.returncode == 0, out.stderr
    rows = {" ".join(r.split()[:-1]): r.split()[-1] for r in out.stdout.splitlines() if r.split()[-1:] != []}
    assert rows["file headers read (ambiguous versions)"] == "0"
    assert rows["not read yet (read by a later crawl)"] == "5" and rows["errors"] == "5"
    assert out.stdout.count("HTTP 401: the file needs a Civitai API key") == 3 and "and 2 more" in out.stdout


def test_a_429_stops_the_header_reads_for_this_crawl(world):
    _, storage, _, db = world
    for blob in storage.blobs.values():
        blob.status = 429
    summary = crawl(world)
    assert (summary.headers_read, summary.proofs_deferred) == (0, 1) and len(storage.requests) == 1
    assert "stopped" in summary.first_errors[0].reason and not proof_keys(db)
    for blob in storage.blobs.values():
        blob.status = None
    assert crawl(world).headers_read == 5


def test_the_budget_bounds_a_crawl_and_the_rest_wait(world):
    summary = crawl(world, proof_budget=2)
    assert summary.headers_read == 2
    assert crawl(world).headers_read == 3


@pytest.mark.parametrize(
    "kw, ambiguous",
    [(dict(version_name="v1", base_model_type="Standard", file_names=["a.safetensors"], model_name="X Inpainting",
           model_tags=[]), True),
     (dict(version_name="v1", base_model_type="Inpainting", file_names=["a.safetensors"], model_name="X",
           model_tags=[]), True),
     (dict(version_name="v1-inp", base_model_type="Standard", file_names=["a.safetensors"], model_name="X",
           model_tags=[]), True),
     (dict(version_name="v1 inpainting", base_model_type="Inpainting", file_names=["a-inpainting.safetensors"],
           model_name="X", model_tags=[]), False),
     (dict(version_name="v1", base_model_type="Standard", file_names=["a.safetensors"], model_name="ThinPaintLine",
           model_tags=["painting"]), False)],
)  # fmt: skip
def test_what_counts_as_ambiguous(kw, ambiguous):
    assert (detect.ambiguity(**kw) is not None) == ambiguous


def test_evidence_of_an_earlier_proof_is_replaced_not_stacked():
    once = detect.with_proof(False, 0.0, ["x"], "inpaint", "9 input channels in its header")
    twice = detect.with_proof(*once, "inpaint", "9 input channels in its header")
    assert twice == once and json.dumps(twice[2]).count("header proves") == 1


def test_ambiguous_versions_behind_many_clear_ones_are_still_reached(world, monkeypatch):
    """Versions that mention inpainting and agree with themselves are never proven: the search pages past them."""
    from crawler.civitai import proof as civitai_proof

    monkeypatch.setattr(civitai_proof, "PENDING_BATCH", 1)
    assert crawl(world).headers_read == 5


def test_a_crafted_header_is_recorded_and_shown_as_text(registry_db, serve):
    """A stranger's file whose header is malformed, with escape sequences in a tensor name: the proof's problem
    is kept (quoted, cut), the verdict stays, and lookup prints it as text."""
    import struct

    from tests.conftest import cli_env, run_cli

    raw = json.dumps({"\x1b]8;;http://evil.example\x07x\x1b[2J": {"dtype": "EVIL", "shape": [1],
                                                                  "data_offsets": [0, 1]}}).encode()  # fmt: skip
    spec = {"id": 710, "name": "Crafted Inpainting", "downloads": 10, "tags": ["inpainting"],
            "versions": [["v1", "SD 1.5", "Standard", "crafted_v1.safetensors"]]}
    storage = FakeStorage()
    with StorageServer(storage) as storage_url:
        fake = FakeCivitai([item(spec, 0)], duplicate_at_boundary=False)
        storage.blobs["7100"] = Blob(struct.pack("<Q", len(raw)) + raw + b"\0")
        fake.downloads["7100"] = (f"{storage_url}/blob/7100?X-Amz-Signature=abc", False)
        summary = civitai.crawl(registry_layer.open(registry_db), base_url=serve(fake), policy=FAST)
    assert summary.headers_read == 1 and summary.proofs_unreadable == 1
    is_inp, _, evidence = verdict(registry_db, 710, 0)
    # stored with the tensor name quoted (its escapes as text), the metadata verdict kept
    assert is_inp and "could not be read" in evidence[-1] and "\x1b" not in evidence[-1] and "\\x1b" in evidence[-1]
    out = run_cli("lookup", "civitai:710", "--offline", env=cli_env(INPAINT_ADVISOR_DB=registry_db))
    assert out.returncode == 0 and not any(ch in out.stdout + out.stderr for ch in "\x1b\x07\x9b")


def _blobs_read(storage) -> set[str]:
    return {r["path"].split("?", 1)[0] for r in storage.requests}


def _listed(blob_bytes: bytes) -> list[dict]:
    """What Civitai's tensor-metadata endpoint answers for a safetensors file: its header's tensors."""
    n = int.from_bytes(blob_bytes[:8], "little")
    header = json.loads(blob_bytes[8 : 8 + n])
    return [{"name": k, "shape": v["shape"], "dtype": v["dtype"].lower() if k.endswith("bias") else v["dtype"],
             "sizeBytes": v["data_offsets"][1] - v["data_offsets"][0]}
            for k, v in header.items() if k != "__metadata__"]  # fmt: skip


def test_the_tensors_civitai_lists_prove_a_file_without_reading_it(world):
    """Tensor metadata first (June 2026): no Range read at all where Civitai lists the file's tensors, and the
    same verdicts as the files' own headers give."""
    fake, storage, _, db = world
    for spec, files in CASES:
        for pos, content in files.items():
            if not isinstance(content, Blob):
                fake.tensor_metadata[str(version_id(spec["id"], pos) * 10)] = _listed(sd_file(*content))
    summary = crawl(world)
    assert summary.headers_read == 5 and summary.proofs_changed == 2 and summary.proofs_unreadable == 1
    assert _blobs_read(storage) == {f"/blob/{version_id(704, 0)}"}  # only the file Civitai does not list was read
    is_inp, _, evidence = verdict(db, 700, 0)
    assert is_inp and any("as Civitai lists its tensors" in e for e in evidence)
    asked = [r for r in fake.requests if r["path"].endswith("/tensor-metadata")]
    assert asked and all(r["path"].startswith("/api/v1/model-files/") for r in asked)


@pytest.mark.parametrize("answer", ["malformed", "absent"])
def test_a_list_civitai_cannot_give_falls_back_to_the_files_header(world, answer):
    fake, storage, _, db = world
    listed = _listed(sd_file("sd1", "inpaint"))
    listed[0]["shape"] = ["not", "a", "shape"]
    if answer == "malformed":
        fake.tensor_metadata[str(version_id(700, 0) * 10)] = listed
    summary = crawl(world)
    assert summary.headers_read == 5 and f"/blob/{version_id(700, 0)}" in _blobs_read(storage)
    assert verdict(db, 700, 0)[0] is True


def test_tensor_metadata_of_a_file_whose_downloads_are_disabled_is_recorded_as_gone(world):
    from tests.civitai_fake import DISABLED

    fake, storage, _, db = world
    fake.tensor_metadata[str(version_id(700, 0) * 10)] = DISABLED
    summary = crawl(world)
    assert "the creator has disabled downloads of this file" in summary.first_errors[0].reason
    assert f"/blob/{version_id(700, 0)}" not in _blobs_read(storage)
    assert sha_of(db, 7000) in proof_keys(db)


@pytest.mark.parametrize("status, body, content_type", [
    (200, b'{"tensors": ' + b"[" * 200_000, "application/json"),  # nested past the parser's depth
    (200, b'{"tensors": [{"name": "x", "shape": [-1], "dtype": "F16"}]}', "application/json"),
    (200, b'{"tensors": [{"name": "x", "shape": [4], "dtype": "Q9_WHAT"}]}', "application/json"),
    (200, b"<html>edge</html>", "text/html"),
    (403, b'{"error": "This API key has been disabled"}', "application/json"),  # not the file's downloads
    (302, b"", "text/plain"),
])  # fmt: skip
def test_a_tensor_list_civitai_cannot_give_is_no_answer_and_no_crash(status, body, content_type):
    import httpx

    from crawler.civitai.proof import listed_tensors

    seen = []

    def answer(request):
        seen.append(request)
        return httpx.Response(status, content=body, headers={"content-type": content_type,
                                                             "location": "https://elsewhere.example/x"})  # fmt: skip

    with httpx.Client(transport=httpx.MockTransport(answer)) as client:
        assert listed_tensors(client, "https://civitai.example", "5", TOKEN) is None
    assert len(seen) == 1  # a redirect is not followed


def test_the_tensor_list_is_asked_with_the_token_only_where_every_request_may_carry_it():
    import httpx

    from crawler.civitai.proof import listed_tensors

    sent = []

    def answer(request):
        sent.append(request.headers.get("authorization"))
        return httpx.Response(404, json={"error": "File not found"})

    with httpx.Client(transport=httpx.MockTransport(answer)) as client:
        listed_tensors(client, "https://civitai.example", "5", TOKEN)
        listed_tensors(client, "http://192.0.2.2:8080", "5", TOKEN)  # plain http to a host that is not local
    assert sent == [f"Bearer {TOKEN}", None]


def test_a_base_model_of_other_is_classified_from_its_files_tensors(registry_db, serve):
    """"Other" (or a base model the data does not know) says nothing of the family: the file's tensors do, from
    Civitai's tensor list or the header, and lookup then answers for that family."""
    from tests.hf_fake import safetensors_header

    specs = [{"id": 760, "name": "Mystery Mix", "downloads": 50, "tags": [],
              "versions": [["v1", "Other", "Standard", "mystery_v1.safetensors"]]},
             {"id": 761, "name": "Odd Transformer", "downloads": 40, "tags": [],
              "versions": [["v1", "Some New Base", "Standard", "odd_v1.safetensors"]]},
             {"id": 762, "name": "Clip Thing", "downloads": 30, "tags": [],
              "versions": [["v1", "Wan Video 14B t2v", "Standard", "clip_v1.safetensors"]]}]  # fmt: skip
    qwen = {"txt_norm.weight": (3584,), "img_in.weight": (3072, 64), "proj_out.weight": (64, 3072)}
    storage = FakeStorage()
    with StorageServer(storage) as storage_url:
        fake = FakeCivitai([item(spec, i) for i, spec in enumerate(specs)], duplicate_at_boundary=False)
        storage.blobs[str(version_id(760, 0))] = Blob(sd_file("sdxl", "normal") + b"\0" * 4096)
        fake.tensor_metadata[str(version_id(761, 0) * 10)] = _listed(safetensors_header(qwen, "BF16"))
        for mid in (760, 761, 762):
            vid = str(version_id(mid, 0))
            fake.downloads[vid] = (f"{storage_url}/blob/{vid}?X-Amz-Signature=abc", True)
        civitai.crawl(registry_layer.open(registry_db), base_url=serve(fake), token=TOKEN, policy=FAST)
    assert lookup("civitai:760", db=registry_db, offline=True).match.family == "sdxl"
    odd = lookup("civitai:761", db=registry_db, offline=True)
    assert odd.match.family == "qwen-image" and odd.recommendation.route == "qwen-image-controlnet-inpainting"
    assert _blobs_read(storage) == {f"/blob/{version_id(760, 0)}"}  # Civitai listed 761's; 762 is a video model


def test_a_base_model_its_names_contradict_is_checked_against_the_files_tensors(registry_db, serve):
    """A version said to be SD 1.5 whose names say XL: Civitai's tensor list tells SDXL, the registry records
    SDXL with the reason, and a later crawl of the model keeps it. Names that agree cost no read."""
    from tests.hf_fake import safetensors_header
    from tests.sd_layouts import checkpoint_shapes

    specs = [{"id": 770, "name": "Juggernaut", "downloads": 50, "tags": [],
              "versions": [["Ragnarok", "SD 1.5", "Standard", "juggernautXL_ragnarok.safetensors"]]},
             {"id": 771, "name": "DreamShaper XL", "downloads": 40, "tags": [],
              "versions": [["v2", "SDXL 1.0", "Standard", "dreamshaperXL_v2.safetensors"]]},
             {"id": 772, "name": "Flux-style Realism XL", "downloads": 30, "tags": [],
              "versions": [["v1", "SDXL 1.0", "Standard", "fluxStyleRealismXL_v1.safetensors"]]},
             {"id": 773, "name": "Plain Mix", "downloads": 20, "tags": [],
              "versions": [["v1", "SD 1.5", "Standard", "plainMix_v1.safetensors"]]}]  # fmt: skip
    sdxl = safetensors_header(checkpoint_shapes("sdxl", "normal", scale=8))
    fake = FakeCivitai([item(spec, i) for i, spec in enumerate(specs)], duplicate_at_boundary=False)
    for mid in (770, 771, 772, 773):
        fake.tensor_metadata[str(version_id(mid, 0) * 10)] = _listed(sdxl)
    civitai.crawl(registry_layer.open(registry_db), base_url=serve(fake), token=TOKEN, policy=FAST)
    asked = {r["path"].split("/")[4] for r in fake.requests if "/tensor-metadata" in r["path"]}
    assert asked == {str(version_id(770, 0) * 10)}  # the one whose names and base model disagree
    answer = lookup("civitai:770", db=registry_db, offline=True)
    assert answer.match.family == "sdxl"
    with registry_layer.open(registry_db, "lookup") as reader:
        (version,) = reader.versions("civitai:770")
    assert "its file's tensors are Stable Diffusion XL's (its base model says SD 1.5)" in version.evidence

    specs[0]["tags"] = ["photorealistic"]  # the model changed: its page is stored again, from its metadata
    again = FakeCivitai([item(spec, i) for i, spec in enumerate(specs)], duplicate_at_boundary=False)
    civitai.crawl(registry_layer.open(registry_db), base_url=serve(again), token=TOKEN, policy=FAST)
    assert not [r for r in again.requests if "/tensor-metadata" in r["path"]]  # proven once, by the file's hash
    assert lookup("civitai:770", db=registry_db, offline=True).match.family == "sdxl"


def test_tensors_that_tell_another_size_correct_the_base_model():
    from crawler.civitai.proof import _family_from

    def told(said, arch):
        return _family_from({"family": said}, {"arch": arch})

    assert told("flux2-klein-4b", "flux2-klein-9b") == "flux2-klein-9b"  # the 9B's text width
    assert told("flux2", "flux2-klein-4b") == "flux2-klein-4b"
    assert told("pony", "sdxl") is None and told("playground-v2", "sdxl") is None  # SDXL's shapes, their lineage
    assert told("flux2-klein-4b", "flux2") is None  # FLUX.2 with no size the table knows: the base model says
    assert told("sd1", "sdxl") == "sdxl"


def test_a_hub_repo_of_a_klein_base_keeps_its_size_when_the_shapes_agree():
    from crawler.hf.repos import _family

    assert _family(["black-forest-labs/FLUX.2-klein-4B"], "flux2-klein-4b", None) == ("flux2-klein-4b", None)
    family, note = _family(["black-forest-labs/FLUX.2-klein-4B"], "flux2-klein-9b", None)
    assert family == "flux2-klein-9b" and "tensor shapes are flux2-klein-9b" in note
