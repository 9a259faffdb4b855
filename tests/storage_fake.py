"""Signed storage as Civitai's downloads reach it (and any file server): bytes with Range, ETag and
Content-Disposition, and the faults a download must survive: a connection dropped mid-body, a transfer held
mid-body (a moment to kill -9 the downloader), a body that is not what the registry says."""

import hashlib
import threading
from dataclasses import dataclass, field
from urllib.parse import quote, unquote, urlsplit

from tests.local_server import FakeApiHandler, LocalServer


@dataclass
class Blob:
    data: bytes
    filename: str | None = None  # sent as Content-Disposition
    content_type: str = "application/octet-stream"
    drop_after: int | None = None  # close the connection after this many body bytes, once
    hold_after: int | None = None  # send this many body bytes, then wait for ``release``, once
    etag: str | None = None
    status: int | None = None  # answer every request with this status instead (503: storage in trouble)

    def __post_init__(self):
        self.etag = self.etag or f'"{hashlib.sha256(self.data).hexdigest()[:16]}"'

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest().upper()


@dataclass
class FakeStorage:
    blobs: dict[str, Blob] = field(default_factory=dict)
    requests: list[dict] = field(default_factory=list)
    holding: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self):
        self._lock = threading.Lock()


def disposition(name: str) -> str:
    """A plain ``filename=""`` where it can carry the name, else RFC 5987's ``filename*`` (non-ASCII, quotes)."""
    if name.isascii() and '"' not in name and "\\" not in name:
        return f'attachment; filename="{name}"'
    return f"attachment; filename*=UTF-8''{quote(name, safe='')}"


class _Handler(FakeApiHandler):
    storage: FakeStorage

    def do_GET(self):
        storage = self.storage
        key = unquote(urlsplit(self.path).path).removeprefix("/blob/")
        with storage._lock:
            storage.requests.append({"path": self.path, "range": self.headers.get("Range"),
                                     "authorization": self.headers.get("Authorization")})  # fmt: skip
        blob = storage.blobs.get(key)
        if blob is None:
            return self._send(404, b"<Error><Code>NoSuchKey</Code></Error>", "application/xml")
        start, stop, status = 0, len(blob.data), 200
        wanted = self.headers.get("Range")
        if blob.status is not None:
            return self._send(blob.status, b"<Error><Code>SlowDown</Code></Error>", "application/xml")
        if wanted and (self.headers.get("If-Range") in (None, blob.etag)):
            first, _, last = wanted.removeprefix("bytes=").partition("-")
            start = int(first)
            stop = min(stop, int(last) + 1) if last else stop  # "bytes=0-524287": a header read
            if start >= len(blob.data):
                return self._send(416, b"", headers={"Content-Range": f"bytes */{len(blob.data)}"})
            status = 206
        body = blob.data[start:stop]
        self.send_response(status)
        self.send_header("Content-Type", blob.content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", blob.etag)
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{len(blob.data)}")
        if blob.filename:
            self.send_header("Content-Disposition", disposition(blob.filename))
        self.end_headers()
        cut, hold = None, False
        if blob.drop_after is not None:
            cut, blob.drop_after = blob.drop_after, None
        elif blob.hold_after is not None:
            cut, hold, blob.hold_after = blob.hold_after, True, None
        if cut is not None:  # part of the body, then the connection goes (after a wait, when held)
            self.wfile.write(body[:cut])
            self.wfile.flush()
            if hold:
                storage.holding.set()
                storage.release.wait(timeout=60)
            self.close_connection = True
            self.connection.shutdown(2)
            return
        self.wfile.write(body)


class StorageServer(LocalServer):
    def __init__(self, storage: FakeStorage):
        super().__init__(type("Handler", (_Handler,), {"storage": storage}))
        # connections dropped on purpose (and clients killed mid-transfer) are not errors worth a traceback
        self.httpd.handle_error = lambda request, address: None
