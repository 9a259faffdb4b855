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
  access, early access), 404, 451 (region block), a JSON, HTML or text body where a model was expected (told
  from its first bytes, whatever its Content-Type says), a size far from the one the registry records.
- SHA256 is computed while the bytes stream (a resumed file's first part is read once); a mismatch with the
  registry's hash removes the file and says so with both hashes; with no known hash the result says
  ``verified=False``. Only then is the file renamed to its final name (from Content-Disposition, reduced to a
  safe basename; nothing is written outside the target folder). The sidecar lives in that folder, which others
  may write: it is read like a stranger's text, and one with a name that is not a safe basename, or any field
  of the wrong kind, is ignored (the download starts over). The partial file is never followed through a link.
- A complete, verified file is done even where the record of it cannot be written (a disk that fills at the
  very end): that is a warning, and the next run finds the file under its final name by its SHA256.
- A lock per file (``filelock``: flock on POSIX, LockFileEx on Windows) makes two builds share one download:
  the second waits, then finds it done.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx
from filelock import FileLock

from advisor.safety import safe_filename, terminal_text
from crawler.http import (
    ApiError,
    RedirectError,
    Retryable,
    RetryPolicy,
    failure,
    new_client,
    open_redirected,
    redact,
    retrying,
    transport_errors_retried,
)
from data import settings
from data.errors import InpaintAdvisorError
from merge import hashing
from merge.hashing import BackgroundHasher, FileHashes, StreamHasher
from merge.header import CheckpointError, header_length

CHUNK = 1 << 20
SIZE_TOLERANCE = 0.02  # Civitai records sizes in (rounded) KB; a 2 % difference is a different file
_PREFIX = ".inpaint-advisor-"
_SNIFF = 4096  # the first bytes of a body that tell a page of text from a model file
_TEXT_BYTES = bytes(range(0x20, 0x7F)) + bytes(range(0x80, 0x100)) + b"\t\n\r\f\v"  # any encoding's text
_MAX_SIDECAR = 64 * 1024  # a sidecar or record is a few hundred bytes: anything far larger is not one
_MAX_VALIDATOR = 1024
# opening what a stranger may have planted: not through a link, and never waiting on a FIFO (Windows has neither)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_BINARY = getattr(os, "O_BINARY", 0)


class DownloadError(InpaintAdvisorError):
    """A download that cannot succeed as asked; nothing is left under a final name. ``code`` names the kind."""

    code = "download-failed"


@dataclass
class Source:
    url: str
    name: str | None = None  # the file name the registry records: used when the server sends none
    sha256: str | None = None  # expected, any case
    size: int | None = None  # expected bytes, when known
    token: str | None = None  # Bearer token, sent to the URL's own host only
    label: str = ""  # what the file is for, for messages ("A", "B", "C", "release")
    weights: bool = True  # False for a diffusers folder's JSON configs: then a JSON body is what is expected
    keep_name: bool = False  # ``name`` is the file's name whatever the server calls it (a UI folder's file)


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
    warnings: list[str] = field(default_factory=list)  # the file is good, but its bookkeeping could not be written


def _key(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()[:16]


def _filename(response: httpx.Response) -> str | None:
    value = response.headers.get("content-disposition")
    if not value:
        return None
    message = Message()
    message["content-disposition"] = value
    return message.get_filename()


def _is_model(first: bytes) -> bool:
    """Whether a body starts as a checkpoint does: safetensors (an 8-byte little-endian header length, then the
    header's ``{``: its first byte may itself be ``{``, ``[`` or ``<``), torch's zip (.ckpt, .pt, .bin) or a
    bare pickle (protocol 2-5). A diffusers folder's weights are one of these too."""
    if first[8:9] == b"{" and header_length(first) is not None:
        return True
    return first.startswith(b"PK\x03\x04") or (first[:1] == b"\x80" and first[1:2] in (b"\x02", b"\x03", b"\x04",
                                                                                  b"\x05"))  # fmt: skip


def _text(first: bytes) -> bytes | None:
    """The first few KB of a body as text (a byte-order mark dropped, UTF-16 made UTF-8), or None where they hold
    a control byte, as every binary format does within its first bytes."""
    sample = first[:_SNIFF]
    if sample.startswith(b"\xef\xbb\xbf"):
        sample = sample[3:]
    elif sample.startswith((b"\xff\xfe", b"\xfe\xff")):
        sample = sample[: len(sample) // 2 * 2].decode("utf-16", "replace").encode()
    return None if sample.translate(None, _TEXT_BYTES) else sample


def _body_kind(content_type: str, first: bytes) -> str | None:
    """"a JSON", "an HTML" or "a text" page where a model file was expected (an error answer saved as a model is
    the classic), told from the first bytes whatever the Content-Type says (a JSON error sent as
    application/octet-stream, a page that starts with a comment); None for what starts as a model does."""
    if not first or _is_model(first):
        return None
    ctype = content_type.lower()
    text = _text(first)
    head = (first[:_SNIFF] if text is None else text).lstrip()[:64].lower()
    if "html" in ctype or head.startswith((b"<!doctype", b"<html", b"<?xml", b"<!--")) or (
            text is not None and head.startswith(b"<")):  # fmt: skip
        return "an HTML"
    if "json" in ctype or head.startswith((b"{", b"[")) and (text is not None or b'"' in head[:4]):
        return "a JSON"
    return "a text" if text is not None else None


def _gated_page(response: httpx.Response) -> str | None:
    """The repo page where a gated Hub file's conditions are accepted, when the Hub says that is the refusal."""
    if response.headers.get("x-error-code") != "GatedRepo":
        return None
    url = urlsplit(str(response.request.url))
    repo = url.path.split("/resolve/", 1)[0].strip("/")
    return f"{url.scheme}://{url.netloc}/{repo}"


def _refusal(response: httpx.Response, refused: ApiError, what: str) -> DownloadError:
    """The one line that says why a download was refused, and what to do, from the answer's status and what the
    server said (crawler.http.error_body, through ``refused``)."""
    status, detail = refused.status, refused.detail
    page = _gated_page(response)
    if page is not None:
        return DownloadError(f"{what}: a gated repo (HTTP {status}): log in at {page}, accept its conditions, then "
                             "set HF_TOKEN to an access token with read permission (huggingface.co/settings/tokens)",
                             "gated")  # fmt: skip
    if status == 401 and "disabled downloads" in detail.lower():  # Civitai's "downloads-disabled" (domain.md 1)
        return DownloadError(f"{what}: the creator has disabled downloads of this file (HTTP 401): no API key "
                             "gives access; ask the creator, or look for another version",
                             "downloads-disabled")  # fmt: skip
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


def _int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _safe_name(name: object) -> str | None:
    """``name`` where it is a file name a download could have been given: what ``safe_filename`` makes of it is
    itself (one path component, no ``..``, not hidden, no control characters), so the target stays in its
    folder; None for anything else (``../../.ssh/authorized_keys``, an absolute path, not a string)."""
    if not isinstance(name, str) or not name or safe_filename(name, "") != name or Path(name).name != name:
        return None
    return name


def _read_small(path: Path) -> bytes | None:
    """A small regular file's bytes; None where it is missing, a link, not a regular file (a FIFO planted in a
    shared folder would block a plain open forever), too large or unreadable."""
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _NONBLOCK | _BINARY)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size > _MAX_SIDECAR:
                return None
            data = f.read(_MAX_SIDECAR + 1)
        except OSError:
            return None
    return data if len(data) <= _MAX_SIDECAR else None


def _write_new(path: Path, data: bytes) -> None:
    """``data`` in a new file at ``path`` (whatever was there, a planted link included, removed, not followed)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _BINARY, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _write_json(path: Path, value: dict) -> None:
    """``value`` as ``path``, whole or not at all (a full disk leaves the old file, or none)."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        _write_new(tmp, json.dumps(value).encode())
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def _checked_state(raw: bytes | None, url: str) -> dict | None:
    """A sidecar's fields when it is this URL's and each is of the kind ``_transfer`` writes; None otherwise."""
    try:
        state = json.loads(raw) if raw is not None else None
    except (ValueError, RecursionError):
        return None
    if not isinstance(state, dict) or state.get("url") != url:
        return None
    validator, size, name = state.get("validator"), state.get("size"), state.get("name")
    if validator is not None and not (isinstance(validator, str) and len(validator) <= _MAX_VALIDATOR
                                      and validator.isascii() and validator.isprintable()):  # fmt: skip
        return None  # it goes back to the server as an If-Range header: one line of ASCII
    if (size is not None and not _int(size)) or (name is not None and _safe_name(name) is None):
        return None
    return {"url": url, "validator": validator, "size": size, "name": name}


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

    def sidecar(self, url: str) -> dict | None:
        """The sidecar, checked: the folder may be shared, so whoever can write it could have planted one (a
        name that renames the download to ``~/.ssh/authorized_keys``); one that fails any check is ignored."""
        return _checked_state(_read_small(self.meta), url)

    def state(self, url: str) -> dict | None:
        """The sidecar of a partial file to resume: both there, the partial file a regular file, not a link."""
        state = self.sidecar(url)
        try:
            plain = stat.S_ISREG(os.lstat(self.data).st_mode)
        except OSError:
            return None
        return state if plain else None

    def save(self, state: dict) -> None:
        _write_json(self.meta, state)

    def open(self, resume: bool):
        """The partial file for writing: continued only where it is a regular file (opened without following a
        link, never waiting on a FIFO), else created anew in place of whatever was there."""
        if not resume:
            self.data.unlink(missing_ok=True)
            return os.fdopen(os.open(self.data, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _BINARY, 0o644), "wb")
        try:
            fd = os.open(self.data, os.O_RDWR | _NOFOLLOW | _NONBLOCK | _BINARY)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.EMLINK):  # (ELOOP, or EMLINK on BSDs: a link)
                raise
            fd = -1
        # a link (replaced since it was looked at), or a file with another name too (a hard link planted in a
        # shared folder: writing would change that file): started over, as a new file of its own
        if fd < 0 or not stat.S_ISREG((st := os.fstat(fd)).st_mode) or st.st_nlink != 1:
            if fd >= 0:
                os.close(fd)
            self.clear()
            raise Retryable("the partial file is not a file of its own: starting over", 0)
        return os.fdopen(fd, "r+b")

    def clear(self) -> None:
        for p in (self.data, self.meta):
            p.unlink(missing_ok=True)


_REDIRECT_TROUBLE = {"no-location": "a redirect without a Location", "too-many": "too many redirects",
                     "bad-scheme": "a redirect to something other than http(s), not followed",
                     "private-address": "a redirect to a private address, refused by "
                                        "INPAINT_ADVISOR_REFUSE_PRIVATE_REDIRECTS"}  # fmt: skip


def _redirected(client: httpx.Client, url: str, headers: dict, token: str | None, what: str) -> httpx.Response:
    try:
        return open_redirected(client, url, headers, token)
    except RedirectError as exc:
        if exc.kind == "login-wall":
            raise DownloadError(f"{what}: redirected to a login page: set CIVITAI_API_TOKEN to an API key",
                                "login-wall") from None  # fmt: skip
        raise DownloadError(f"{what}: {_REDIRECT_TROUBLE.get(exc.kind, exc.kind)} ({exc.where})") from None


def _hash_existing(f, upto: int) -> StreamHasher:
    """The hashes of the first ``upto`` bytes of the open partial file ``f``."""
    h = StreamHasher()
    f.seek(0)
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
    # no byte for a stall's length is a timeout too (then resumed where it stopped)
    limits = httpx.Timeout(timeout, read=min(timeout, _stall_seconds()))
    client = client or new_client(timeout=limits)
    policy = policy or RetryPolicy(attempts=8, base_delay=1.0, max_delay=30.0)
    fetched = [0]
    resumed = [False]
    try:
        with FileLock(partial.lock):  # another build fetching the same file: wait for it
            done = _already_done(partial, source, folder)
            if done is not None:
                return done

            def attempt() -> tuple[str, FileHashes, tuple[int, int]]:
                return _transfer(client, source, partial, what, fetched, resumed, progress)

            kwargs = {"sleep": sleep} if sleep else {}
            name, hashes, written = retrying(attempt, policy, what, **kwargs)
            return _finish(source, partial, folder, name, hashes, written, shown, fetched[0], resumed[0])
    except DownloadError:
        raise
    except OSError as exc:
        raise DownloadError(f"{what}: cannot write in {folder} ({exc.strerror})", "disk") from None
    except Exception as exc:  # RetriesExhausted and the like: one line
        raise DownloadError(f"{what}: {exc}", "network") from None
    finally:
        if own_client:
            client.close()


def _already_done(partial: _Partial, source: Source, folder: Path) -> Downloaded | None:
    """This URL was downloaded into this folder before, and the file is still there as it was: reused, nothing
    fetched. A waiter on another build's download finds it here too."""
    return _recorded(partial, source, folder) or _complete_unrecorded(partial, source, folder)


def _recorded(partial: _Partial, source: Source, folder: Path) -> Downloaded | None:
    """The record of this download, where the file it names is still the one checked: its stat as recorded
    (size, mtime, ctime, inode, device: free to tell), or else its bytes hashed again to the recorded SHA256 (a
    chmod, a new link to it, a record of an older release, the file moved elsewhere and linked back)."""
    try:
        record = json.loads(_read_small(partial.done) or b"null")
    except (ValueError, RecursionError):
        return None
    if not isinstance(record, dict):
        return None
    where, stamp, sha = record.get("path"), record.get("stamp"), record.get("sha256")
    if not (isinstance(where, str) and isinstance(sha, str)):
        return None
    if source.sha256 and sha.upper() != source.sha256.upper():
        return None
    path = Path(where)
    try:
        st = os.stat(path)  # through a link: the inode and device say which file it is
        inside = path.parent == folder.resolve()
    except OSError:
        return None
    if not inside or not stat.S_ISREG(st.st_mode):
        return None
    if hashing.stat_stamp(st) != stamp:  # changed, swapped, or only touched: its bytes say which
        try:
            now = (hashing.cached(path, autov3=False) or hashing.file_hashes(path, autov3=False)).sha256
        except (OSError, CheckpointError):
            return None
        if now.upper() != sha.upper():
            return None
        _record(partial, path, os.stat(path), now.upper(), record.get("verified") is True)
    return Downloaded(path, redact(source.url), 0, st.st_size, sha.upper(), False, record.get("verified") is True,
                      reused=True)  # fmt: skip


def _complete_unrecorded(partial: _Partial, source: Source, folder: Path) -> Downloaded | None:
    """No record (the disk was full when it was to be written), but the file is there under its final name,
    the name the sidecar left behind gives or the registry's, and has the SHA256 the registry records: reused
    (hashed once, where the hash cache does not know it), and recorded now."""
    if not source.sha256:
        return None
    expected = source.sha256.upper()
    sidecar = partial.sidecar(source.url)
    own = _safe_name(safe_filename(source.name)) if source.name else None
    names = [_resumed_name(sidecar, source, own) if own else None, own]
    for name in dict.fromkeys(n for n in names if n):
        path = folder / name
        try:
            st = os.stat(path)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode):
            continue
        if sidecar and sidecar["name"] == name and sidecar["size"] is not None:
            if st.st_size != sidecar["size"]:
                continue
        elif source.size and abs(st.st_size - source.size) > SIZE_TOLERANCE * source.size:
            continue  # another file of that name: not worth reading to hash
        try:
            sha = (hashing.cached(path, autov3=False) or hashing.file_hashes(path, autov3=False)).sha256.upper()
        except (OSError, CheckpointError):
            continue
        if sha != expected:
            continue
        warnings = _record(partial, path, os.stat(path), sha, True)
        return Downloaded(path, redact(source.url), 0, st.st_size, sha, False, True, reused=True, warnings=warnings)
    return None


def _check_start(source: Source, content_type: str, first: bytes, what: str) -> None:
    """DownloadError unless a model file may start with ``first``: no page (HTML, JSON, text), not empty, and
    where no SHA256 or size is recorded to check the rest, the start of a model file."""
    kind = _body_kind(content_type, first)
    if kind:
        excerpt = terminal_text(" ".join(first[:160].decode("utf-8", "replace").split()))
        raise DownloadError(f"{what}: the server answered with {kind} page, not a model file ({excerpt})",
                            "not-a-model")  # fmt: skip
    if not first:
        raise DownloadError(f"{what}: the server answered with an empty body, not a model file: not saved",
                            "not-a-model")  # fmt: skip
    if not (source.sha256 or source.size) and not _is_model(first):
        raise DownloadError(f"{what}: the body does not start as a model file does (safetensors, a torch zip or "
                            "pickle), and no SHA256 or size is recorded to check it: not saved", "not-a-model")


def _head(path: Path) -> bytes:
    """The first bytes of a partial file being resumed; none where it is no longer a regular file of its own."""
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _NONBLOCK | _BINARY)
    except OSError:
        return b""
    try:
        return os.read(fd, SNIFF) if stat.S_ISREG(os.fstat(fd).st_mode) else b""
    finally:
        os.close(fd)


def _resumed_name(state: dict | None, source: Source, fresh: str) -> str | None:
    """The name a resumed download keeps (the one it started under, as its sidecar says), where the sidecar may
    choose one at all: never for a file whose name is ours (``keep_name``), and only of the kind of file this
    is (its suffix), so a sidecar planted in a shared folder cannot make a model ``webui-user.sh``."""
    name = state.get("name") if state else None
    if not name or (source.keep_name and source.name):
        return None
    kind = Path(fresh).suffix.lower()
    return name if kind and Path(name).suffix.lower() == kind else None


def _record(partial: _Partial, target: Path, st: os.stat_result, sha: str, verified: bool) -> list[str]:
    """Record a finished download, so that the next run finds it; best effort: a full disk leaves the file good
    and done (the next run finds it by its SHA256, or fetches it again where none is known), and a warning."""
    try:
        where = target.parent.resolve() / target.name  # the name in the folder, not where a link leads
        _write_json(partial.done, {"path": str(where), "stamp": hashing.stat_stamp(st), "sha256": sha,
                                   "verified": verified})  # fmt: skip
    except OSError as exc:  # the sidecar stays: it names the file for the next run
        return [f"{target.name}: complete and {'verified' if verified else 'unverified'}, but the record of the "
                f"download could not be written in {partial.done.parent} ({exc.strerror or exc}): a later run may "
                "read it again to find it"]  # fmt: skip
    with contextlib.suppress(OSError):
        partial.meta.unlink(missing_ok=True)
    return []


def _transfer(client, source: Source, partial: _Partial, what: str, fetched: list, resumed: list,
              progress) -> tuple[str, FileHashes, tuple[int, int]]:  # fmt: skip
    """One attempt: resume or start, stream to the partial file; (final name, its hashes, the partial file's
    inode and device) when complete."""
    state = partial.state(source.url)
    offset = partial.data.stat().st_size if state else 0
    # the bytes as stored: a compressed body would be decoded past every size check (a 2 MB gzip -> 2 GiB)
    headers = {"Accept": "application/octet-stream, */*", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        if state and state.get("validator"):  # (an offset means a state)
            headers["If-Range"] = state["validator"]
    with transport_errors_retried():
        response = _redirected(client, source.url, headers, source.token, what)
    hasher = None
    try:
        status = response.status_code
        if status == 416 and offset:  # nothing left to send: the partial file may be whole already
            partial.clear()
            raise Retryable("HTTP 416 for a resume: starting over", 0)
        problem = failure(response, what)
        if isinstance(problem, ApiError):
            raise _refusal(response, problem, what)
        if problem is not None:
            raise problem
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
        served = None if source.keep_name and source.name else _filename(response)
        fresh = safe_filename(served or source.name or unquote(urlsplit(str(response.url)).path.rsplit("/", 1)[-1]))
        name = _resumed_name(state if start else None, source, fresh) or fresh
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise DownloadError(f"{what}: the server sent a {encoding}-encoded body although none was asked for: "
                                "not saved", "not-a-model")  # fmt: skip
        limit = _byte_limit(source, total, partial.data.parent)
        iterator = _bounded(response.iter_raw(), limit - start, what, _stall_seconds())
        try:
            first = _first_bytes(iterator)
        except (httpx.TimeoutException, httpx.TransportError) as exc:
            raise Retryable(type(exc).__name__) from None
        if source.weights:  # a resumed file's start is what was kept of it: a partial planted there is checked too
            head = first if start == 0 else _head(partial.data)
            try:
                _check_start(source, response.headers.get("content-type", "") if start == 0 else "", head, what)
            except DownloadError:
                partial.clear()
                raise
        if start == 0:
            _check_size(source, total, what)
        _check_space(partial.data.parent, (total or 0) - start, what)
        resumed[0] = resumed[0] or bool(start)
        partial.save({"url": source.url, "validator": validator, "size": total, "name": name})
        with partial.open(bool(start)) as out:
            hasher = BackgroundHasher(_hash_existing(out, start) if start else StreamHasher())
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
                why = str(exc) if str(exc).startswith("stalled") else type(exc).__name__
                raise Retryable(f"{why} after {done:,} bytes; resuming") from None
            except DownloadError:  # more bytes than the file can have: what came is not the file
                partial.clear()
                raise
            out.flush()
            os.fsync(out.fileno())
            written = os.fstat(out.fileno())
        if total is not None and done != total:
            raise Retryable(f"the connection ended at byte {done:,} of {total:,}; resuming", 0)
        return name, hasher.result(), (written.st_ino, written.st_dev)
    finally:
        response.close()
        if hasher is not None:
            hasher.close()


SNIFF = 64 * 1024  # what the body checks look at before a byte is saved
STALL_SECONDS = 60.0
STALL_MIN_BYTES = 64 * 1024  # fewer than this in a stall window: the transfer crawls, and is resumed


def _stall_seconds() -> float:
    configured = settings.current().stall_seconds
    return max(0.1, STALL_SECONDS if configured is None else configured)


def _byte_limit(source: Source, total: int | None, folder: Path) -> int:
    """The most bytes a body may bring: the size expected (the registry's, else the server's own) and a small
    margin; where neither is known, what the disk can spare (never the whole disk)."""
    expected = source.size or total
    if expected:
        return int(expected * (1 + SIZE_TOLERANCE)) + CHUNK
    return max(0, shutil.disk_usage(folder).free - 2 * 2**30)


def _bounded(chunks: Iterator[bytes], allowed: int, what: str, stall: float) -> Iterator[bytes]:
    """``chunks`` cut off past ``allowed`` bytes, and given up when the body crawls: fewer than
    STALL_MIN_BYTES in ``stall`` seconds (a server dripping a byte at a time never trips a read timeout)."""
    import time

    seen, window_start, window_bytes = 0, time.monotonic(), 0
    for chunk in chunks:
        seen += len(chunk)
        if seen > allowed:
            raise DownloadError(f"{what}: the server sent more than the {allowed:,} bytes expected: cut off, "
                                "nothing kept", "size-mismatch")  # fmt: skip
        window_bytes += len(chunk)
        now = time.monotonic()
        if now - window_start >= stall:
            if window_bytes < STALL_MIN_BYTES:
                raise httpx.ReadTimeout(f"stalled: {window_bytes} bytes in {now - window_start:.0f} s")
            window_start, window_bytes = now, 0
        yield chunk


def _first_bytes(iterator: Iterator[bytes]) -> bytes:
    """The body's first SNIFF bytes (fewer when it is shorter), for the checks before anything is saved."""
    first = b""
    while len(first) < SNIFF:
        chunk = next(iterator, b"")
        if not chunk:
            break
        first += chunk
    return first


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


def _finish(source: Source, partial: _Partial, folder: Path, name: str, hashes: FileHashes,
            written: tuple[int, int], shown: str, fetched: int, resumed: bool) -> Downloaded:  # fmt: skip
    sha = hashes.sha256
    expected = source.sha256.upper() if source.sha256 else None
    if expected and sha != expected:
        partial.clear()
        raise DownloadError(f"{source.label + ': ' if source.label else ''}{name} from {shown} has sha256 {sha}, "
                            f"but {expected} was expected: removed (a damaged or replaced file)",
                            "hash-mismatch")  # fmt: skip
    target = folder / name
    if target.exists():
        there = hashing.cached(target, autov3=False)
        if there is None and _same_size(target, partial.data):  # perhaps this very file, fetched before: read
            with contextlib.suppress(OSError, CheckpointError):
                there = hashing.file_hashes(target, autov3=False)
        if there is None or there.sha256.upper() != sha:
            partial.clear()
            raise DownloadError(f"{target} exists and is another file: not replaced (move it away and run again)",
                                "exists")  # fmt: skip
    # the file hashed as it was written, still: one swapped in at the partial's name (a shared folder) never
    # takes the final name, or is taken back off it where the swap came between this look and the rename
    if not _is_file(partial.data, written):
        partial.clear()
        raise DownloadError(f"{target}: the downloaded file was replaced before it got its name: not kept",
                            "hash-mismatch")  # fmt: skip
    os.replace(partial.data, target)
    if not _is_file(target, written):
        target.unlink(missing_ok=True)
        raise DownloadError(f"{target}: the downloaded file was replaced as it got its name: removed",
                            "hash-mismatch")  # fmt: skip
    # Done: the file is complete, verified where a hash is known, under its final name. What follows is
    # bookkeeping, and a disk full by now (or a cache that cannot be written) makes it a warning, not a failure.
    warnings = [problem] if (problem := _remember(target, hashes)) else []  # never read again to hash it
    st = target.stat()
    warnings += _record(partial, target, st, sha, expected is not None)
    return Downloaded(target, shown, fetched, st.st_size, sha, resumed, expected is not None, warnings=warnings)


def _is_file(path: Path, identity: tuple[int, int]) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and (st.st_ino, st.st_dev) == identity


def _same_size(a: Path, b: Path) -> bool:
    try:
        return os.stat(a).st_size == os.stat(b).st_size
    except OSError:
        return False


def _remember(target: Path, hashes: FileHashes) -> str | None:
    try:
        return hashing.remember(target, hashes)
    except OSError as exc:
        return f"the hashes of {target.name} could not be cached ({exc.strerror or exc})"
