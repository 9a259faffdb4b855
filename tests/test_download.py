"""advisor.download against real local servers: Civitai's 307 to signed storage, the Hub's resolve URLs, and
every way a download goes wrong."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from advisor.download import DownloadError, Source, fetch
from crawler.http import RetryPolicy
from merge import hashing
from tests.civitai_fake import FakeCivitai, Server
from tests.conftest import ROOT, cli_env
from tests.storage_fake import Blob, FakeStorage, StorageServer

FAST = RetryPolicy(attempts=5, base_delay=0.001, max_delay=0.01)
DATA = os.urandom(3 * 2**20 + 12345)
TOKEN = "civitai-token-s3cret"


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("INPAINT_ADVISOR_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def storage():
    fake = FakeStorage()
    with StorageServer(fake) as url:
        fake.url = url
        yield fake


@pytest.fixture
def civitai(storage):
    fake = FakeCivitai([])
    with Server(fake) as url:
        fake.url = url
        yield fake


def _offer(civitai, storage, vid: str, blob: Blob, *, needs_token: bool = False) -> Source:
    storage.blobs[vid] = blob
    civitai.downloads[vid] = (f"{storage.url}/blob/{vid}?X-Amz-Signature=abc", needs_token)
    return Source(f"{civitai.url}/api/download/models/{vid}", name="registry-name.safetensors", sha256=blob.sha256,
                  size=len(blob.data), token=TOKEN, label="B")  # fmt: skip


def test_a_civitai_download_follows_the_redirect_without_the_token(tmp_path, civitai, storage):
    source = _offer(civitai, storage, "101", Blob(DATA, "majicmixRealistic_v7.safetensors"), needs_token=True)
    got = fetch(source, tmp_path, policy=FAST)
    assert got.path == tmp_path / "majicmixRealistic_v7.safetensors" and got.path.read_bytes() == DATA
    assert got.verified and got.sha256 == source.sha256 and not got.resumed and got.bytes == len(DATA)
    assert civitai.auth_headers == [f"Bearer {TOKEN}"]  # the token went to Civitai...
    assert [r["authorization"] for r in storage.requests] == [None]  # ...and not to the storage host
    assert TOKEN not in got.url
    assert hashing.cached(got.path).sha256 == source.sha256  # hashed while streaming, cached: no second read
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", got.path.name]  # no partial, lock or record


def test_a_dropped_connection_resumes_with_range_and_fetches_only_what_is_missing(tmp_path, civitai, storage):
    source = _offer(civitai, storage, "102", Blob(DATA, "m.safetensors", drop_after=2**20))
    got = fetch(source, tmp_path, policy=FAST)
    assert got.path.read_bytes() == DATA and got.resumed and got.verified
    assert [r["range"] for r in storage.requests] == [None, f"bytes={2**20}-"]
    assert got.bytes == len(DATA)  # 1 MiB, then the rest: nothing fetched twice


@pytest.mark.parametrize("blob, code, words", [
    (Blob(json.dumps({"error": "Unauthorized", "message": "log in"}).encode(), content_type="application/json"),
     "not-a-model", "a JSON page"),
    (Blob(b"<!DOCTYPE html><html>Cloudflare</html>", content_type="text/html"), "not-a-model", "an HTML page"),
    (Blob(os.urandom(2 * 2**20)), "size-mismatch", "the registry records"),
])  # fmt: skip
def test_bodies_that_are_not_the_model_are_refused_and_never_saved(tmp_path, civitai, storage, blob, code, words):
    source = _offer(civitai, storage, "103", blob)
    source.size = len(DATA)
    with pytest.raises(DownloadError, match=words) as refused:
        fetch(source, tmp_path, policy=FAST)
    assert refused.value.code == code
    assert [p.name for p in tmp_path.iterdir() if p.name != "cache"] == []


def test_the_login_wall_says_what_to_do(tmp_path, civitai, storage):
    source = _offer(civitai, storage, "104", Blob(DATA), needs_token=True)
    source.token = None
    with pytest.raises(DownloadError, match="login required .*CIVITAI_API_TOKEN") as refused:
        fetch(source, tmp_path, policy=FAST)
    assert refused.value.code == "login-wall" and storage.requests == []


def test_a_hash_mismatch_removes_the_file_and_names_both_hashes(tmp_path, civitai, storage):
    source = _offer(civitai, storage, "105", Blob(DATA, "m.safetensors"))
    source.sha256 = "AB" * 32
    with pytest.raises(DownloadError, match=f"has sha256 {Blob(DATA).sha256}, but {'AB' * 32} was expected"):
        fetch(source, tmp_path, policy=FAST)
    assert [p.name for p in tmp_path.iterdir() if p.name != "cache"] == []


def test_without_a_known_hash_the_file_is_unverified(tmp_path, civitai, storage):
    source = _offer(civitai, storage, "106", Blob(DATA, "m.safetensors"))
    source.sha256 = None
    got = fetch(source, tmp_path, policy=FAST)
    assert not got.verified and got.sha256 == Blob(DATA).sha256


@pytest.mark.parametrize("name, expected", [
    ("../../etc/passwd.safetensors", "passwd.safetensors"),
    ('x$(touch owned)";rm -rf ~;".safetensors', 'x$(touch owned)";rm -rf ~;".safetensors'),
    ("-rf.safetensors", "rf.safetensors"),
    ("麦橘写实 v7.safetensors", "麦橘写实 v7.safetensors"),
])  # fmt: skip
def test_the_file_name_from_the_server_stays_in_the_folder(tmp_path, civitai, storage, name, expected):
    target = tmp_path / "out"
    got = fetch(_offer(civitai, storage, "107", Blob(DATA, name)), target, policy=FAST)
    assert got.path == target / expected and got.path.parent == target
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "out"]


def test_a_changed_file_on_the_server_restarts_the_resume(tmp_path, civitai, storage):
    blob = Blob(DATA, "m.safetensors", drop_after=2**20)
    source = _offer(civitai, storage, "108", blob)
    with pytest.raises(DownloadError):
        fetch(source, tmp_path, policy=RetryPolicy(attempts=1))  # gave up with a partial file
    changed = os.urandom(len(DATA))
    storage.blobs["108"] = Blob(changed, "m.safetensors")  # a new ETag: If-Range makes the server send it whole
    source.sha256 = Blob(changed).sha256
    got = fetch(source, tmp_path, policy=FAST)
    assert got.path.read_bytes() == changed and not got.resumed


def test_two_fetches_of_one_file_share_one_transfer(tmp_path, civitai, storage):
    source = _offer(civitai, storage, "109", Blob(DATA, "m.safetensors"))
    results = []
    threads = [threading.Thread(target=lambda: results.append(fetch(source, tmp_path, policy=FAST)))
               for _ in range(2)]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(storage.requests) == 1 and sorted(r.reused for r in results) == [False, True]
    assert {r.path for r in results} == {tmp_path / "m.safetensors"}


FETCH = """
import sys
from advisor.download import Source, fetch
from crawler.http import RetryPolicy
got = fetch(Source(sys.argv[1], sha256=sys.argv[2]), sys.argv[3], policy=RetryPolicy(attempts=3, base_delay=0.01))
print(got.resumed, got.bytes)
"""


def test_a_download_killed_with_sigkill_resumes_when_run_again(tmp_path, civitai, storage):
    blob = Blob(DATA, "m.safetensors", hold_after=2**21)
    source = _offer(civitai, storage, "110", blob)
    args = [sys.executable, "-c", FETCH, source.url, source.sha256, str(tmp_path / "out")]
    env = cli_env(INPAINT_ADVISOR_CACHE=str(tmp_path / "cache"))
    child = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert storage.holding.wait(60), "the download never started"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the held part written, the rest never coming
            partial = next((tmp_path / "out").glob(".inpaint-advisor-*.partial"), None)
            if partial is not None and partial.stat().st_size >= 2**21:
                break
            time.sleep(0.01)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(30)
    finally:
        storage.release.set()
    assert not (tmp_path / "out" / "m.safetensors").exists()  # nothing under the final name
    again = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    resumed, fetched = again.stdout.split()
    assert resumed == "True" and int(fetched) == len(DATA) - 2**21  # only the missing bytes
    assert (tmp_path / "out" / "m.safetensors").read_bytes() == DATA


def test_a_gated_hub_file_says_where_to_accept_its_conditions(tmp_path):
    from tests.hf_fake import FakeFile, FakeHub, FakeRepo, HubServer

    hub = FakeHub([FakeRepo("black-forest-labs/FLUX.1-Fill-dev", gated=True,
                            files={"flux1-fill-dev.safetensors": FakeFile(b"x" * 100)})])  # fmt: skip
    with HubServer(hub) as url, pytest.raises(DownloadError) as refused:
        fetch(Source(f"{url}/black-forest-labs/FLUX.1-Fill-dev/resolve/main/flux1-fill-dev.safetensors"),
              tmp_path / "out", policy=RetryPolicy(attempts=1))  # fmt: skip
    assert refused.value.code == "gated"
    message = str(refused.value)
    assert f"{url}/black-forest-labs/FLUX.1-Fill-dev" in message and "HF_TOKEN" in message
    assert list((tmp_path / "out").iterdir()) == []


def test_hashes_fed_from_a_thread_equal_the_file_hashes(tmp_path):
    import random

    data = random.Random(3).randbytes(3 * 2**20 + 17)
    header = b'{"w":{"dtype":"U8","shape":[8],"data_offsets":[0,8]}}'
    blob = len(header).to_bytes(8, "little") + header + data
    (tmp_path / "f.safetensors").write_bytes(blob)
    h = hashing.BackgroundHasher()
    for i in range(0, len(blob), 65537):
        h.update(blob[i : i + 65537])
    assert h.result() == hashing.file_hashes(tmp_path / "f.safetensors", use_cache=False)


def test_a_sha256_only_hash_is_one_pass_and_a_later_full_hash_adds_autov3(tmp_path, monkeypatch):
    import random

    monkeypatch.setenv("INPAINT_ADVISOR_CACHE", str(tmp_path / "cache"))
    data = random.Random(4).randbytes(2 * 2**20 + 5)
    header = b'{"w":{"dtype":"U8","shape":[8],"data_offsets":[0,8]}}'
    f = tmp_path / "f.safetensors"
    f.write_bytes(len(header).to_bytes(8, "little") + header + data)
    passes = []
    real = hashing.StreamHasher.update_data
    monkeypatch.setattr(hashing.StreamHasher, "update_data", lambda s, c, p: passes.append(s.autov3) or real(s, c, p))
    quick = hashing.file_hashes(f, autov3=False)
    assert not any(passes)  # the data pass never ran with AutoV3 on
    assert quick.autov3 is None and not quick.data_pass
    assert hashing.cached(f) is None and hashing.cached(f, autov3=False) == quick  # unknown AutoV3 is no hit
    full = hashing.file_hashes(f)
    assert full.sha256 == quick.sha256 and full.autov3 is not None and full.data_pass
    assert hashing.file_hashes(f, autov3=False) == full == hashing.cached(f)  # the fuller entry serves both


def test_a_cache_entry_from_before_data_pass_reads_with_autov3_known(tmp_path, monkeypatch):
    monkeypatch.setenv("INPAINT_ADVISOR_CACHE", str(tmp_path / "cache"))
    f = tmp_path / "f.bin"
    f.write_bytes(b"x" * 100)
    name, stamp = hashing.file_stamp(f)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "hashes.json").write_text(json.dumps(
        {name: {"stamp": stamp, "sha256": "AB" * 32, "autov2": "AB" * 5}}))  # an older, sparser entry
    hit = hashing.cached(f)
    assert hit is not None and hit.autov1 is None and hit.autov3 is None and hit.data_pass is True
