"""Downloading a model file, the one way every source uses (Civitai, the Hub, the official checkpoints):
resumable, verified, and never a bad file under a final name.

- Bytes go to a hidden ``.inpaint-advisor-<key>.partial`` beside the target, with a sidecar (``.json``) that
  records the URL, the server's validator (ETag / Last-Modified) and the expected size. Run again after a
  dropped connection, a kill -9 or a reboot, the transfer continues with ``Range`` (and ``If-Range``); a 200
  instead of a 206, a ``Content-Range`` that does not start where the file ends, or a changed validator starts
  it over. Within one run, dropped connections and 429/5xx are retried the same way, with backoff.
- Redirects are followed here, not by the client: the token goes to the first host only (Civitai's 307 to
  signed storage carries no Authorization), and a redirect to a login page is a login wall.
- Refused before a byte is saved, each with one line that says why and what to do: 401 (login wall), 403 (no
  access, early access), 404, 451 (region block), a JSON or HTML body where a model was expected, a size far
  from the one the registry records.
- SHA256 is computed while the bytes stream (a resumed file's first part is read once); a mismatch with the
  registry's hash removes the file and says so with both hashes; with no known hash the result says
  ``verified=False``. Only then is the file renamed to its final name (from Content-Disposition, reduced to a
  safe basename; nothing is written outside the target folder).
- A lock per file (``filelock``: flock on POSIX, LockFileEx on Windows) makes two builds share one download:
  the second waits, then finds it done.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx
from filelock import FileLock

from advisor.safety import safe_filename
from crawler.http import (
    RedirectError,
    Retryable,
    RetryPolicy,
    open_redirected,
    redact,
    retry_wait,
    retrying,
    user_agent,
)
from merge import hashing
from merge.hashing import BackgroundHasher, FileHashes, StreamHasher

CHUNK = 1 << 20
SIZE_TOLERANCE = 0.02  # Civitai records sizes in (rounded) KB; a 2 % difference is a different file
_PREFIX = ".inpaint-advisor-"


class DownloadError(Exception):
    """A download that cannot succeed as asked; nothing is left under a final name. ``code`` names the kind."""

    def __init__(self, message: str, code: str = "download-failed"):
        super().__init__(message)
        self.code = code


@dataclass
class Source:
    url: str
    name: str | None = None  # the file name the registry records: used when the server sends none
    sha256: str | None = None  # expected, any case
    size: int | None = None  # expected bytes, when known
    token: str | None = None  # Bearer token, sent to the URL's own host only
    label: str = ""  # what the file is for, for messages ("A", "B", "C", "release")
    weights: bool = True  # False for a diffusers folder's JSON configs: then a JSON body is what is expected


@dataclass
class Downloaded:
    path: Path
    url: str  # never with a token in it
    bytes: int  # fetched by this run
    size: int
    sha256: str  # upper-case hex
    resumed: bool
    verified: bool  # matched a known SHA256
    reused: bool = False  # was already there: nothing fetched


def _key(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()[:16]


def _filename(response: httpx.Response) -> str | None:
    value = response.headers.get("content-disposition")
    if not value:
        return None
    message = Message()
    message["content-disposition"] = value
    return message.get_filename()


def _body_kind(content_type: str, first: bytes) -> str | None:
    """"a JSON" or "an HTML" page where a model file was expected (an error answer saved as a model is the
    classic)."""
    head = first.lstrip()[:64].lower()
    if "json" in content_type or head.startswith((b"{", b"[")) and b'"' in head[:4]:
        return "a JSON"
    if "html" in content_type or head.startswith((b"<!doctype", b"<html", b"<?xml")):
        return "an HTML"
    return None


def _message_of(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return " ".join(response.text.split())[:160]
    if isinstance(body, dict):
        return str(body.get("message") or body.get("error") or body)[:200]
    return str(body)[:160]


def _gated_page(response: httpx.Response) -> str | None:
    """The repo page where a gated Hub file's conditions are accepted, when the Hub says that is the refusal."""
    if response.headers.get("x-error-code") != "GatedRepo":
        return None
    url = urlsplit(str(response.request.url))
    repo = url.path.split("/resolve/", 1)[0].strip("/")
    return f"{url.scheme}://{url.netloc}/{repo}"


def _refusal(response: httpx.Response, what: str) -> DownloadError:
    status, detail = response.status_code, _message_of(response)
    page = _gated_page(response)
    if page is not None:
        return DownloadError(f"{what}: a gated repo (HTTP {status}): log in at {page}, accept its conditions, then "
                             "set HF_TOKEN to an access token with read permission (huggingface.co/settings/tokens)",
                             "gated")  # fmt: skip
    if status == 401:
        return DownloadError(f"{what}: login required (HTTP 401: {detail}). For Civitai set CIVITAI_API_TOKEN to "
                             "an API key (civitai.com/user/account); for a gated Hub repo accept its licence and "
                             "set HF_TOKEN", "login-wall")  # fmt: skip
    if status == 403:
        return DownloadError(f"{what}: no access (HTTP 403: {detail}); early access or a purchase may be needed, "
                             "or the token lacks the right", "no-access")  # fmt: skip
    if status == 404:
        return DownloadError(f"{what}: not found (HTTP 404: {detail})", "not-found")
    if status == 451:
        return DownloadError(f"{what}: not available in this region (HTTP 451)", "region-blocked")
    return DownloadError(f"{what}: HTTP {status}: {detail}", "http-error")


def _bookkeeping() -> Path:
    """Where locks and the records of finished downloads live: the cache, not the user's folder."""
    folder = hashing.cache_dirs()[0] / "downloads"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class _Partial:
    """The hidden partial file and its sidecar, beside the target; the lock and the record of a finished
    download in the cache."""

    def __init__(self, folder: Path, url: str):
        key = _key(url)
        self.data = folder / f"{_PREFIX}{key}.partial"
        self.meta = folder / f"{_PREFIX}{key}.partial.json"
        book = _bookkeeping()
        place = _key(f"{folder.resolve()}\n{url}")
        self.lock = book / f"{place}.lock"
        self.done = book / f"{place}.done.json"

    def state(self, url: str) -> dict | None:
        try:
            state = json.loads(self.meta.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(state, dict) or state.get("url") != url or not self.data.exists():
            return None
        return state

    def save(self, state: dict) -> None:
        tmp = self.meta.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.meta)

    def clear(self) -> None:
        for p in (self.data, self.meta):
            p.unlink(missing_ok=True)




def _redirected(client: httpx.Client, url: str, headers: dict, token: str | None, what: str) -> httpx.Response:
    try:
        return open_redirected(client, url, headers, token)
    except RedirectError as exc:
        if exc.kind == "login-wall":
            raise DownloadError(f"{what}: redirected to a login page: set CIVITAI_API_TOKEN to an API key",
                                "login-wall") from None  # fmt: skip
        raise DownloadError(f"{what}: " + ("a redirect without a Location" if exc.kind == "no-location" else
                                           "too many redirects")) from None  # fmt: skip


def _hash_existing(path: Path, upto: int) -> StreamHasher:
    h = StreamHasher()
    with open(path, "rb") as f:
        left = upto
        while left > 0:
            chunk = f.read(min(CHUNK, left))
            if not chunk:
                break
            h.update(chunk)
            left -= len(chunk)
    return h


def fetch(source: Source, folder: str | os.PathLike, *, policy: RetryPolicy | None = None, timeout: float = 60.0,
          progress: Callable[[int, int | None], None] | None = None, client: httpx.Client | None = None,
          sleep=None) -> Downloaded:  # fmt: skip
    """Download ``source`` into ``folder``. ``progress(done_bytes, total_bytes)`` is called as bytes arrive.
    Raises DownloadError (with a ``code``) for anything that is not a verified, complete file."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shown = redact(source.url)
    what = f"{source.label + ': ' if source.label else ''}{shown}"
    partial = _Partial(folder, source.url)
    own_client = client is None
    client = client or httpx.Client(headers={"User-Agent": user_agent()}, timeout=timeout, follow_redirects=False)
    policy = policy or RetryPolicy(attempts=8, base_delay=1.0, max_delay=30.0)
    fetched = [0]
    resumed = [False]
    try:
        with FileLock(partial.lock):  # another build fetching the same file: wait for it
            done = _already_done(partial, source)
            if done is not None:
                return done

            def attempt() -> tuple[str, FileHashes]:
                return _transfer(client, source, partial, what, fetched, resumed, progress)

            kwargs = {"sleep": sleep} if sleep else {}
            name, hashes = retrying(attempt, policy, what, **kwargs)
            return _finish(source, partial, folder, name, hashes, shown, fetched[0], resumed[0])
    except DownloadError:
        raise
    except OSError as exc:
        raise DownloadError(f"{what}: cannot write in {folder} ({exc.strerror})", "disk") from None
    except Exception as exc:  # RetriesExhausted and the like: one line
        raise DownloadError(f"{what}: {exc}", "network") from None
    finally:
        if own_client:
            client.close()


def _already_done(partial: _Partial, source: Source) -> Downloaded | None:
    """This URL was downloaded into this folder before, and the file is still there as it was (size and mtime):
    reused, nothing fetched. A waiter on another build's download finds it here too."""
    try:
        record = json.loads(partial.done.read_text())
        path = Path(record["path"])
        st = path.stat()
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if st.st_size != record.get("size") or st.st_mtime_ns != record.get("mtime_ns"):
        return None
    sha = str(record.get("sha256", "")).upper()
    if source.sha256 and sha != source.sha256.upper():
        return None
    return Downloaded(path, redact(source.url), 0, st.st_size, sha, False, bool(record.get("verified")), reused=True)


def _transfer(client, source: Source, partial: _Partial, what: str, fetched: list, resumed: list,
              progress) -> tuple[str, FileHashes]:  # fmt: skip
    """One attempt: resume or start, stream to the partial file; (final name, its hashes) when complete."""
    state = partial.state(source.url)
    offset = partial.data.stat().st_size if state else 0
    headers = {"Accept": "application/octet-stream, */*"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        if state and state.get("validator"):  # (an offset means a state)
            headers["If-Range"] = state["validator"]
    try:
        response = _redirected(client, source.url, headers, source.token, what)
    except (httpx.TimeoutException, httpx.TransportError) as exc:
        raise Retryable(type(exc).__name__) from None
    hasher = None
    try:
        status = response.status_code
        if status == 429 or status >= 500:
            raise Retryable(f"HTTP {status}", retry_wait(response))
        if status == 416 and offset:  # nothing left to send: the partial file may be whole already
            partial.clear()
            raise Retryable("HTTP 416 for a resume: starting over", 0)
        if status >= 400:
            response.read()
            raise _refusal(response, what)
        validator = response.headers.get("etag") or response.headers.get("last-modified")
        start = 0
        if status == 206:
            content_range = response.headers.get("content-range", "")
            if not content_range.startswith(f"bytes {offset}-"):
                partial.clear()
                raise Retryable(f"Content-Range {content_range!r} does not continue at byte {offset}", 0)
            start = offset
        elif offset:
            partial.clear()  # a 200 to a Range request: the server sends it whole (or it changed)
        if state and start and validator and state.get("validator") and validator != state["validator"]:
            partial.clear()
            raise Retryable("the file changed on the server: starting over", 0)
        total = _total(response, start)
        name = state.get("name") if state and start else None
        name = name or safe_filename(_filename(response) or source.name
                                     or unquote(urlsplit(str(response.url)).path.rsplit("/", 1)[-1]))  # fmt: skip
        iterator = response.iter_bytes(CHUNK)
        try:
            first = next(iterator, b"")
        except (httpx.TimeoutException, httpx.TransportError) as exc:
            raise Retryable(type(exc).__name__) from None
        if start == 0:
            kind = _body_kind(response.headers.get("content-type", ""), first) if source.weights else None
            if kind:
                raise DownloadError(f"{what}: the server answered with {kind} page, not a model file "
                                    f"({' '.join(first[:160].decode('utf-8', 'replace').split())})",
                                    "not-a-model")  # fmt: skip
            _check_size(source, total, what)
        _check_space(partial.data.parent, (total or 0) - start, what)
        hasher = BackgroundHasher(_hash_existing(partial.data, start) if start else StreamHasher())
        resumed[0] = resumed[0] or bool(start)
        partial.save({"url": source.url, "validator": validator, "size": total, "name": name})
        with open(partial.data, "r+b" if start else "wb") as out:
            out.seek(start)
            out.truncate()
            done = start
            chunk = first
            try:
                while chunk:
                    out.write(chunk)
                    hasher.update(chunk)
                    done += len(chunk)
                    fetched[0] += len(chunk)
                    if progress:
                        progress(done, total)
                    chunk = next(iterator, b"")
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                out.flush()
                raise Retryable(f"{type(exc).__name__} after {done:,} bytes; resuming") from None
            out.flush()
            os.fsync(out.fileno())
        if total is not None and done != total:
            raise Retryable(f"the connection ended at byte {done:,} of {total:,}; resuming", 0)
        return name, hasher.result()
    finally:
        response.close()
        if hasher is not None:
            hasher.close()


def _total(response: httpx.Response, start: int) -> int | None:
    content_range = response.headers.get("content-range", "")
    if "/" in content_range and content_range.rsplit("/", 1)[1].isdigit():
        return int(content_range.rsplit("/", 1)[1])
    length = response.headers.get("content-length")
    return start + int(length) if length and length.isdigit() else None


def _check_size(source: Source, total: int | None, what: str) -> None:
    if source.size and total is not None and abs(total - source.size) > SIZE_TOLERANCE * source.size:
        raise DownloadError(f"{what}: the server offers {total:,} bytes but the registry records {source.size:,}: "
                            "not the file it describes", "size-mismatch")  # fmt: skip


def _check_space(folder: Path, needed: int, what: str) -> None:
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise DownloadError(f"{what}: needs {needed / 1e9:.2f} GB, {free / 1e9:.2f} GB free in {folder}", "disk")


def _finish(source: Source, partial: _Partial, folder: Path, name: str, hashes: FileHashes, shown: str,
            fetched: int, resumed: bool) -> Downloaded:  # fmt: skip
    sha = hashes.sha256
    expected = source.sha256.upper() if source.sha256 else None
    if expected and sha != expected:
        partial.clear()
        raise DownloadError(f"{source.label + ': ' if source.label else ''}{name} from {shown} has sha256 {sha}, "
                            f"but {expected} was expected: removed (a damaged or replaced file)",
                            "hash-mismatch")  # fmt: skip
    target = folder / name
    if target.exists():
        there = hashing.cached(target)
        if there is None or there.sha256.upper() != sha:
            partial.clear()
            raise DownloadError(f"{target} exists and is another file: not replaced (move it away and run again)",
                                "exists")  # fmt: skip
    os.replace(partial.data, target)
    partial.meta.unlink(missing_ok=True)
    hashing.remember(target, hashes)  # nobody reads a fresh download again to hash it
    st = target.stat()
    partial.done.write_text(json.dumps({"path": str(target.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                                        "sha256": sha, "verified": expected is not None}))  # fmt: skip
    return Downloaded(target, shown, fetched, st.st_size, sha, resumed, expected is not None)
