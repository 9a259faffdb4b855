"""Bounded downloads: what a hostile or broken server sends cannot fill the disk or stall a build forever."""

import gzip
import hashlib
import time

import pytest

from advisor.build import DownloadError, Source, fetch
from crawler.http import RetryPolicy
from tests.local_server import FakeApiHandler, LocalServer

MODEL = b"\x08\x00\x00\x00\x00\x00\x00\x00{}      " + bytes(range(256)) * 512  # a safetensors-looking body


class Hostile(FakeApiHandler):
    """/gzip: a gzip body (Content-Encoding) whose compressed size is what the registry records; /endless: no
    Content-Length, then more bytes than the file can have; /drip: a byte at a time, slowly; /model: the file."""

    requests: list[str] = []

    def do_GET(self):
        type(self).requests.append(self.path)
        if self.path == "/gzip":
            body = gzip.compress(b"\0" * (64 * 2**20))  # 64 MiB of zeros in ~64 KB
            self._send(200, body, "application/octet-stream", {"Content-Encoding": "gzip"})
        elif self.path == "/endless":
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            try:
                self.wfile.write(MODEL)
                for _ in range(64):  # 64 MiB more than any file of that size
                    self.wfile.write(b"\1" * 2**20)
            except OSError:
                pass
            self.close_connection = True
        elif self.path == "/drip":
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(MODEL)))
            self.end_headers()
            try:
                self.wfile.write(MODEL[:16])
                for b in MODEL[16:64]:
                    self.wfile.write(bytes([b]))
                    self.wfile.flush()
                    time.sleep(0.2)
            except OSError:
                pass
            self.close_connection = True
        else:
            self._send(200, MODEL, "application/octet-stream")


@pytest.fixture
def server():
    Hostile.requests = []
    with LocalServer(Hostile) as url:
        yield url


def _folder_bytes(folder):
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_a_compressed_body_is_never_decoded_past_the_checks(server, tmp_path):
    compressed = len(gzip.compress(b"\0" * (64 * 2**20)))
    with pytest.raises(DownloadError, match="gzip-encoded body") as refused:
        fetch(Source(f"{server}/gzip", name="m.safetensors", size=compressed), tmp_path, policy=RetryPolicy(1))
    assert refused.value.code == "not-a-model" and _folder_bytes(tmp_path) < 2**20


def test_a_body_longer_than_the_file_is_cut_off_and_nothing_is_kept(server, tmp_path):
    with pytest.raises(DownloadError, match="more than the") as refused:
        fetch(Source(f"{server}/endless", name="m.safetensors", size=len(MODEL)), tmp_path, policy=RetryPolicy(1))
    assert refused.value.code == "size-mismatch"
    assert _folder_bytes(tmp_path) < 4 * 2**20 and not list(tmp_path.glob("*.safetensors"))


def test_a_dripping_server_is_a_stall_that_ends(server, tmp_path, monkeypatch):
    monkeypatch.setenv("INPAINT_ADVISOR_STALL_SECONDS", "1")
    started = time.monotonic()
    with pytest.raises(Exception, match="stalled|ReadTimeout|gave up") as failed:
        fetch(Source(f"{server}/drip", name="m.safetensors", size=len(MODEL)), tmp_path,
              policy=RetryPolicy(attempts=2, base_delay=0.01, max_delay=0.01))  # fmt: skip
    assert time.monotonic() - started < 20, "a drip held the download"
    assert "Traceback" not in str(failed.value) and Hostile.requests.count("/drip") == 2  # resumed once, then gave up


def test_the_real_file_still_downloads_with_identity_encoding(server, tmp_path):
    got = fetch(Source(f"{server}/model", name="m.safetensors", size=len(MODEL),
                       sha256=hashlib.sha256(MODEL).hexdigest()), tmp_path)  # fmt: skip
    assert got.verified and got.path.read_bytes() == MODEL
