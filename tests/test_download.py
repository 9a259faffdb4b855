"""advisor.build.download against real local servers: Civitai's 307 to signed storage, the Hub's resolve URLs, and
every way a download goes wrong."""

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from advisor.build import DownloadError, Source, fetch
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


def test_a_file_whose_creator_disabled_downloads_is_named_so(tmp_path, civitai, storage):
    from tests.civitai_fake import DISABLED

    source = _offer(civitai, storage, "106", Blob(DATA))
    civitai.downloads["106"] = (DISABLED, False)
    with pytest.raises(DownloadError, match="the creator has disabled downloads of this file") as refused:
        fetch(source, tmp_path, policy=FAST)
    assert refused.value.code == "downloads-disabled" and storage.requests == []


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
from advisor.build import Source, fetch
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
        # the held part written, the rest never coming; the last few KiB may still sit in the file's buffer,
        # which the kill loses like any process's unflushed writes: wait until the file stops growing
        deadline, seen, still_since = time.monotonic() + 30, -1, time.monotonic()
        while time.monotonic() < deadline:
            partial = next((tmp_path / "out").glob(".inpaint-advisor-*.partial"), None)
            size = partial.stat().st_size if partial is not None else -1
            if size != seen:
                seen, still_since = size, time.monotonic()
            elif size >= 2**21 - 64 * 1024 and time.monotonic() - still_since > 0.3:
                break
            time.sleep(0.01)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(30)
    finally:
        storage.release.set()
    assert not (tmp_path / "out" / "m.safetensors").exists()  # nothing under the final name
    kept = next((tmp_path / "out").glob(".inpaint-advisor-*.partial")).stat().st_size
    assert kept >= 2**21 - 64 * 1024
    again = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    resumed, fetched = again.stdout.split()
    assert resumed == "True" and int(fetched) == len(DATA) - kept  # only the missing bytes
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


# -- a shared output folder: the sidecar, and what else a stranger can plant there ---------------------------------
def _planted(folder, of: str, *, data: bytes | None = b"", sidecar=None, **fields):
    """A partial download of URL ``of`` in ``folder``, as a stranger with write access there could leave one."""
    import hashlib

    folder.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(of.encode()).hexdigest()[:16]
    part, meta = folder / f".inpaint-advisor-{key}.partial", folder / f".inpaint-advisor-{key}.partial.json"
    if data is not None:
        part.write_bytes(data)
    if sidecar is None:
        sidecar = json.dumps({"url": of, "validator": None, "size": len(DATA), "name": "m.safetensors", **fields})
    meta.write_text(sidecar)
    return part, meta


def _files_under(root) -> set:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and "cache" not in p.parts}


@pytest.mark.parametrize("name", ["../../escaped.safetensors", "ABSOLUTE", "..", "", ".hidden.safetensors",
                                  "a/b.safetensors", "x\x1b]8;;evil\x07.safetensors", 123,
                                  ["m.safetensors"]])  # fmt: skip
def test_a_sidecar_name_that_would_leave_the_folder_is_ignored(tmp_path, civitai, storage, name):
    folder = tmp_path / "shared" / "deep" / "out"
    blob = Blob(DATA, "m.safetensors")
    source = _offer(civitai, storage, "120", blob)
    name = str(tmp_path / "abs.safetensors") if name == "ABSOLUTE" else name
    _planted(folder, source.url, data=DATA[: 2**20], validator=blob.etag, name=name)
    got = fetch(source, folder, policy=FAST)
    assert got.path == folder / "m.safetensors" and got.path.read_bytes() == DATA and got.verified
    assert [r["range"] for r in storage.requests] == [None]  # the whole sidecar ignored: started over
    assert _files_under(tmp_path) == {"shared/deep/out/m.safetensors"}  # nothing outside, no sidecar left


def test_a_valid_sidecar_name_still_resumes(tmp_path, civitai, storage):
    blob = Blob(DATA, "m.safetensors")
    source = _offer(civitai, storage, "121", blob)
    _planted(tmp_path / "out", source.url, data=DATA[: 2**20], validator=blob.etag, name="kept-name.safetensors")
    got = fetch(source, tmp_path / "out", policy=FAST)
    assert got.path == tmp_path / "out" / "kept-name.safetensors" and got.path.read_bytes() == DATA
    assert got.resumed and [r["range"] for r in storage.requests] == [f"bytes={2**20}-"]


@pytest.mark.parametrize("fields", [
    {"validator": '"abc"\r\nX-Injected: 1'}, {"validator": ["a"]}, {"validator": "x" * 5000},
    {"size": "3145728"}, {"size": True}, {"size": -1}, {"url": ["not", "a", "url"]},
])  # fmt: skip
def test_a_sidecar_field_of_the_wrong_kind_is_ignored(tmp_path, civitai, storage, fields):
    source = _offer(civitai, storage, "122", Blob(DATA, "m.safetensors"))
    _planted(tmp_path / "out", source.url, data=DATA[: 2**20], **fields)
    got = fetch(source, tmp_path / "out", policy=FAST)
    assert got.path.read_bytes() == DATA and not got.resumed
    assert [r["range"] for r in storage.requests] == [None]


@pytest.mark.parametrize("sidecar", ["[1, 2]", "null", "{", '"text"', "FIFO"])
def test_a_sidecar_that_is_no_sidecar_is_ignored_and_never_blocks(tmp_path, civitai, storage, sidecar):
    source = _offer(civitai, storage, "123", Blob(DATA, "m.safetensors"))
    _part, meta = _planted(tmp_path / "out", source.url, data=DATA[: 2**20], sidecar="")
    if sidecar == "FIFO":
        meta.unlink()
        os.mkfifo(meta)  # a plain open() of it would wait for a writer forever
    else:
        meta.write_text(sidecar)
    got = fetch(source, tmp_path / "out", policy=FAST)
    assert got.path.read_bytes() == DATA and [r["range"] for r in storage.requests] == [None]


def test_a_partial_file_planted_as_a_link_is_not_written_through(tmp_path, civitai, storage):
    blob = Blob(DATA, "m.safetensors")
    source = _offer(civitai, storage, "124", blob)
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"ssh-ed25519 AAAA... me@host\n")
    part, _meta = _planted(tmp_path / "out", source.url, data=None, validator=blob.etag)
    part.symlink_to(victim)
    got = fetch(source, tmp_path / "out", policy=FAST)
    assert got.path.read_bytes() == DATA and victim.read_bytes() == b"ssh-ed25519 AAAA... me@host\n"
    assert [r["range"] for r in storage.requests] == [None]


def test_a_partial_file_swapped_for_a_link_or_a_fifo_before_a_resume_starts_over(tmp_path):
    from advisor.build.download import _Partial
    from crawler.http import Retryable

    partial = _Partial(tmp_path, "http://127.0.0.1:9/x.safetensors")
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    partial.data.symlink_to(victim)
    assert partial.state("http://127.0.0.1:9/x.safetensors") is None  # a link is never resumed
    with pytest.raises(Retryable, match="not a file of its own"):
        partial.open(resume=True)  # (swapped in after the state was read)
    assert not os.path.lexists(partial.data) and victim.read_bytes() == b"keep"
    os.mkfifo(partial.data)
    with pytest.raises(Retryable, match="not a file of its own"):
        partial.open(resume=True)  # at once: never waits for a writer
    assert not os.path.lexists(partial.data)


def test_a_partial_file_planted_as_a_hard_link_is_not_written_through(tmp_path, civitai, storage):
    blob = Blob(DATA, "m.safetensors")
    source = _offer(civitai, storage, "125", blob)
    victim = tmp_path / "victim.txt"
    victim.write_bytes(DATA[:1000])  # looks like the start of the download: a resume would append to it
    part, _meta = _planted(tmp_path / "out", source.url, data=None, validator=blob.etag)
    os.link(victim, part)
    got = fetch(source, tmp_path / "out", policy=FAST)
    assert got.path.read_bytes() == DATA and victim.read_bytes() == DATA[:1000]


def test_a_sidecar_names_a_resumed_file_only_of_its_kind_and_never_a_file_whose_name_is_ours(tmp_path, civitai,
                                                                                            storage):  # fmt: skip
    blob = Blob(DATA, "m.safetensors")
    for vid, planted, keep in (("126", "webui-user.sh", False), ("127", "other.safetensors", True)):
        source = _offer(civitai, storage, vid, blob)
        if keep:
            source = dataclasses.replace(source, name="ours.safetensors", keep_name=True)
        _planted(tmp_path / vid, source.url, data=DATA[:1000], validator=blob.etag, name=planted)
        got = fetch(source, tmp_path / vid, policy=FAST)
        assert got.path.read_bytes() == DATA and not (tmp_path / vid / planted).exists(), vid
        assert got.path.name == ("ours.safetensors" if keep else "m.safetensors"), got.path


def test_a_recorded_download_changed_in_place_with_its_mtime_set_back_is_not_reused(tmp_path, civitai, storage):
    blob = Blob(DATA, "m.safetensors")
    source = _offer(civitai, storage, "128", blob)
    first = fetch(source, tmp_path / "out", policy=FAST)
    st = first.path.stat()
    with open(first.path, "r+b") as f:
        f.seek(-4096, os.SEEK_END)
        f.write(b"\xff" * 4096)
    os.utime(first.path, ns=(st.st_atime_ns, st.st_mtime_ns))  # size and mtime as they were
    with pytest.raises(DownloadError) as failed:  # the file under its name is not the one downloaded
        fetch(source, tmp_path / "out", policy=FAST)
    assert failed.value.code == "exists", failed.value


def test_an_empty_body_or_one_that_is_no_model_with_nothing_to_check_it_is_not_saved(tmp_path, storage):
    for vid, body, said in (("e", b"", "an empty body"), ("t", b"\x00\x01", "does not start as a model file")):
        storage.blobs[vid] = Blob(body)
        with pytest.raises(DownloadError, match=said) as refused:  # no SHA256, no size: nothing else to go by
            fetch(Source(f"{storage.url}/blob/{vid}", name="m.safetensors"), tmp_path / "out", policy=FAST)
        assert refused.value.code == "not-a-model" and not list((tmp_path / "out").glob("*.safetensors"))


# -- pages where a model was expected, whatever the Content-Type says --------------------------------------------
@pytest.mark.parametrize("body, kind", [
    (b"<!-- served by the CDN --><html><body>Rate limited</body></html>", "an HTML"),
    (b"\n\n  <!DOCTYPE html>\n<html>Sign in</html>", "an HTML"),
    (b"<?xml version='1.0'?><Error><Code>AccessDenied</Code></Error>", "an HTML"),
    (json.dumps({"error": "quota", "message": "try later"}, indent=2).encode(), "a JSON"),
    (b'[\n  {"detail": "not found"}\n]', "a JSON"),
    (b"\xef\xbb\xbf  {\n \"error\": true}", "a JSON"),
    ('\ufeff{"error": "UTF-16"}'.encode("utf-16-le"), "a JSON"),
    (b"Too many requests. Please slow down.\n", "a text"),
    ("Ошибка: доступ запрещён\n".encode(), "a text"),
])  # fmt: skip
def test_a_page_sent_as_a_model_is_refused_without_a_known_hash(tmp_path, civitai, storage, body, kind):
    source = _offer(civitai, storage, "130", Blob(body, "m.safetensors"))  # application/octet-stream
    source.sha256 = source.size = None
    with pytest.raises(DownloadError, match=f"answered with {kind} page") as refused:
        fetch(source, tmp_path / "out", policy=FAST)
    assert refused.value.code == "not-a-model"
    assert list((tmp_path / "out").iterdir()) == []  # nothing under a final name, no partial either
    assert len(storage.requests) == 1  # refused at once, not retried


def _safetensors_starting_with(first: bytes) -> bytes:
    """A real safetensors file whose header length's low byte is ``first``: its first byte is ``{``, ``[``..."""
    header = json.dumps({"w": {"dtype": "U8", "shape": [8], "data_offsets": [0, 8]}}).encode()
    n = len(header) + (first[0] - len(header)) % 256 + 256
    return n.to_bytes(8, "little") + header.ljust(n) + os.urandom(8)


@pytest.mark.parametrize("first", [b"{", b"[", b"<", b" ", b"\n"])
def test_a_real_safetensors_file_whose_first_byte_looks_like_text_is_a_model(tmp_path, civitai, storage, first):
    from advisor.build.download import _body_kind
    from merge.header import read_header

    data = _safetensors_starting_with(first)
    assert data[:1] == first and data[8:9] == b"{"
    (tmp_path / "probe.safetensors").write_bytes(data)
    assert read_header(tmp_path / "probe.safetensors").tensors["w"].shape == (8,)  # a valid file indeed
    assert _body_kind("application/octet-stream", data) is None
    source = _offer(civitai, storage, "131", Blob(data, "tiny.safetensors"))
    source.sha256 = source.size = None
    got = fetch(source, tmp_path / "out", policy=FAST)
    assert got.path.read_bytes() == data and not got.verified


def test_what_body_kind_tells_from_the_first_bytes():
    import io
    import pickle
    import zipfile

    from advisor.build.download import _body_kind

    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("archive/data.pkl", b"{}")
    for model in (zipped.getvalue(), pickle.dumps({"w": 1}, protocol=2), pickle.dumps([1], protocol=4),
                  _safetensors_starting_with(b"{"), os.urandom(4096).replace(b"\x00", b"\x01") + b"\x00"):  # fmt: skip
        assert _body_kind("application/octet-stream", model) is None
    assert _body_kind("application/json; charset=utf-8", b"\x00\x01binary?") == "a JSON"  # the header still counts
    assert _body_kind("text/html", os.urandom(64) + b"\x00") == "an HTML"
    assert _body_kind("application/octet-stream", b"{" + b"\x00" * 20) is None  # binary after a brace
    assert _body_kind("application/octet-stream", b"") is None
    # the bytes are the truth both ways: a model's first bytes pass whatever a misconfigured server labels them
    assert _body_kind("application/json", _safetensors_starting_with(b"[")) is None
    assert _body_kind("text/html", zipped.getvalue()) is None


# -- a disk that fills at the very end ----------------------------------------------------------------------------
@pytest.mark.parametrize("served_name", ["m.safetensors", None])  # from Content-Disposition, or the registry's
@pytest.mark.parametrize("hash_cache_full", [False, True])
def test_a_verified_file_whose_record_cannot_be_written_is_done_and_reused(tmp_path, civitai, storage, monkeypatch,
                                                                          served_name, hash_cache_full):  # fmt: skip
    import errno
    import pathlib

    source = _offer(civitai, storage, "140", Blob(DATA, served_name))
    full = [True]
    real_open, real_write_text = os.open, pathlib.Path.write_text

    def no_space(path, *args, **kwargs):  # the disk fills once the file is complete: only the bookkeeping fails
        if full[0] and ".done.json" in os.fspath(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(path))
        return real_open(path, *args, **kwargs)

    def no_space_for_hashes(self, *args, **kwargs):
        if full[0] and "hashes" in self.name:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real_write_text(self, *args, **kwargs)

    monkeypatch.setattr(os, "open", no_space)
    if hash_cache_full:
        monkeypatch.setattr(pathlib.Path, "write_text", no_space_for_hashes)
    got = fetch(source, tmp_path / "out", policy=FAST)
    final = tmp_path / "out" / (served_name or "registry-name.safetensors")
    assert got.path == final and final.read_bytes() == DATA and got.verified and got.bytes == len(DATA)
    assert any("record" in w and "No space left" in w for w in got.warnings), got.warnings
    assert not list((tmp_path / "cache" / "downloads").glob("*.done.json*"))  # nothing half written
    assert (hashing.cached(final) is None) == hash_cache_full
    full[0] = False
    again = fetch(source, tmp_path / "out", policy=FAST)  # no record: found under its final name, by its SHA256
    assert again.reused and again.verified and again.path == final and again.bytes == 0 and not again.warnings
    assert len(storage.requests) == 1  # fetched once
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [final.name]  # the sidecar gone once recorded
    third = fetch(source, tmp_path / "out", policy=FAST)  # recorded now
    assert third.reused and len(storage.requests) == 1


def test_a_file_of_the_registry_name_with_another_hash_is_not_reused(tmp_path, civitai, storage):
    source = _offer(civitai, storage, "141", Blob(DATA))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "registry-name.safetensors").write_bytes(os.urandom(len(DATA)))  # same size, other bytes
    with pytest.raises(DownloadError) as refused:
        fetch(source, tmp_path / "out", policy=FAST)
    assert refused.value.code == "exists" and len(storage.requests) == 1


def test_the_same_file_fetched_again_where_nothing_records_its_hash_is_the_file_there(tmp_path, storage, monkeypatch):
    body = (8).to_bytes(8, "little") + b"{}      " + DATA  # starts as a safetensors file does
    storage.blobs["same"] = Blob(body, "m.safetensors")
    source = Source(f"{storage.url}/blob/same", name="m.safetensors")  # no SHA256, no size recorded
    first = fetch(source, tmp_path / "out", policy=FAST)
    monkeypatch.setenv("INPAINT_ADVISOR_CACHE", str(tmp_path / "another-cache"))  # a cleared cache, another host
    again = fetch(source, tmp_path / "out", policy=FAST)
    assert again.path == first.path and again.path.read_bytes() == body and again.sha256 == first.sha256
    (tmp_path / "out" / "m.safetensors").write_bytes(os.urandom(len(body)))  # another file of that name and size
    monkeypatch.setenv("INPAINT_ADVISOR_CACHE", str(tmp_path / "third-cache"))
    with pytest.raises(DownloadError, match="exists and is another file"):
        fetch(source, tmp_path / "out", policy=FAST)


def _model_body() -> bytes:
    return (8).to_bytes(8, "little") + b"{}      " + DATA  # starts as a safetensors file does


def test_a_planted_partial_that_is_a_page_is_refused_on_resume_too(tmp_path, storage):
    body = _model_body()
    storage.blobs["page"] = Blob(body, "m.safetensors")
    url = f"{storage.url}/blob/page"
    page = b"<html>not a model</html>" + b" " * 1000
    _planted(tmp_path / "out", url, data=page, sidecar=json.dumps({"url": url, "validator": None, "size": len(body),
                                                                  "name": "m.safetensors"}))  # fmt: skip
    with pytest.raises(DownloadError, match="an HTML page") as refused:
        fetch(Source(url, name="m.safetensors"), tmp_path / "out", policy=FAST)  # nothing recorded to check it
    assert refused.value.code == "not-a-model" and not (tmp_path / "out" / "m.safetensors").exists()
    got = fetch(Source(url, name="m.safetensors"), tmp_path / "out", policy=FAST)  # the planted part is gone
    assert got.path.read_bytes() == body


def test_a_finished_partial_swapped_before_it_takes_its_name_is_not_kept(tmp_path, storage, monkeypatch):
    from advisor.build import download

    body = _model_body()
    storage.blobs["swap"] = Blob(body, "m.safetensors")
    real_finish = download._finish

    def swapped_first(source, partial, *args, **kw):
        forged = partial.data.with_name("forged")
        forged.write_bytes(os.urandom(len(body)))
        os.replace(forged, partial.data)  # another file at the partial's name, after it was hashed
        return real_finish(source, partial, *args, **kw)

    monkeypatch.setattr(download, "_finish", swapped_first)
    source = Source(f"{storage.url}/blob/swap", name="m.safetensors", sha256=hashlib.sha256(body).hexdigest())
    with pytest.raises(DownloadError, match="replaced before it got its name"):
        fetch(source, tmp_path / "out", policy=FAST)
    assert not (tmp_path / "out" / "m.safetensors").exists()


def test_a_finished_download_that_was_only_touched_is_reused_without_a_hash_to_go_by(tmp_path, storage):
    body = _model_body()
    storage.blobs["touch"] = Blob(body, "m.safetensors")
    source = Source(f"{storage.url}/blob/touch", name="m.safetensors", size=len(body))  # no SHA256 recorded
    first = fetch(source, tmp_path / "out", policy=FAST)
    os.chmod(first.path, 0o444)  # a new ctime, the same bytes
    os.link(first.path, tmp_path / "out" / "second-name.safetensors")
    again = fetch(source, tmp_path / "out", policy=FAST)
    assert again.reused and again.bytes == 0 and again.sha256 == first.sha256
    assert len([r for r in storage.requests if r["path"].endswith("/touch")]) == 1, storage.requests
