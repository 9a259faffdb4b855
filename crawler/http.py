"""The one HTTP layer every request goes through (crawls, live lookups, proofs, the Hub, downloads): one client
factory, retries with backoff, one redirect policy, clear errors, no token leaks.

Retried: 429, 5xx, timeouts, connection errors and HTML/non-JSON bodies (edge pages). Not retried: other 4xx.
``Retry-After`` (seconds or HTTP date) and Hugging Face's ``RateLimit: "api";r=0;t=<s>`` set the wait when
present; otherwise exponential backoff with full jitter.
"""

import contextlib
import email.utils
import functools
import json
import random
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import httpx
import orjson

from data import settings
from data.errors import InpaintAdvisorError
from data.settings import redact, scrub
from data.terminal import ESCAPE_SEQUENCE

if TYPE_CHECKING:
    import ssl

T = TypeVar("T")


@functools.cache
def user_agent() -> str:
    """``inpaint-advisor/<version>``: the version is the installed distribution's (pyproject.toml's), read once."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"inpaint-advisor/{version('inpaint-advisor')} (+https://github.com/inpaint-advisor)"
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "inpaint-advisor (+https://github.com/inpaint-advisor)"




class CrawlError(InpaintAdvisorError):
    """Base class: a request that could not be answered."""

    code = "crawl-failed"


class Unavailable(CrawlError):
    """The source says the thing asked for is not there for us: deleted, private, gated."""

    def __init__(self, what: str, reason: str, status: int):
        self.what, self.reason, self.status = what, reason, status
        super().__init__(f"{what}: {reason} (HTTP {status})")


class ApiError(CrawlError):
    """A 4xx answer: retrying will not help (bad cursor, not found, auth)."""

    def __init__(self, status: int, url: str, detail: str):
        self.status, self.url, self.detail = status, url, scrub(detail)  # a server may echo the token
        super().__init__(f"HTTP {status} from {url}: {self.detail}")

    def __reduce__(self):  # crosses from the crawl's fetch process
        return (ApiError, (self.status, self.url, self.detail))


class BadSetting(CrawlError):
    """A setting made by hand that no request can be made with: the user's to fix, not the network's."""

    code = "bad-setting"


class BadURL(BadSetting):
    """A URL no request can go to: a mirror or endpoint set by hand with a typo."""


class CertificateStoreError(BadSetting):
    """The certificate store set by hand (SSL_CERT_FILE) cannot be loaded: no HTTPS request can be checked."""


class RetriesExhausted(CrawlError):
    def __init__(self, url: str, attempts: int, last: str):
        self.url, self.attempts, self.last = url, attempts, scrub(last)
        super().__init__(f"gave up on {url} after {attempts} attempts: {self.last}")

    def __reduce__(self):
        return (RetriesExhausted, (self.url, self.attempts, self.last))


def retry_wait(response: httpx.Response, now: float | None = None) -> float | None:
    """Seconds the server asked us to wait (``Retry-After``, or the Hub's ``RateLimit`` reset), if it said."""
    now = time.time() if now is None else now
    value = response.headers.get("retry-after")
    if value:
        if value.strip().isdigit():
            return float(value)
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        if parsed is not None:
            return max(0.0, parsed.timestamp() - now)
    ratelimit = response.headers.get("ratelimit")
    if ratelimit:
        match = re.search(r"\bt=(\d+)", ratelimit)
        if match:
            return float(match.group(1))
    return None


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # a stranger's escape sequences stay out of terminals
ERROR_BODY_LIMIT = 64 * 1024  # read of an error body at most: enough for any message, never a file's worth
ERROR_BODY_SECONDS = 10.0  # and no longer than this, however slowly it drips


def _short(text: str, limit: int = 160) -> str:
    text = re.sub(r"\s+", " ", _CONTROL.sub("", ESCAPE_SEQUENCE.sub("", text))).strip()
    return text[:limit] + ("…" if len(text) > limit else "")


def _body_bytes(response: httpx.Response) -> bytes:
    """The body as read, or its first ERROR_BODY_LIMIT bytes where it streams (an error answer may be huge)."""
    with contextlib.suppress(httpx.ResponseNotRead):
        return response.content[:ERROR_BODY_LIMIT]
    got, until = b"", time.monotonic() + ERROR_BODY_SECONDS
    with contextlib.suppress(httpx.HTTPError, httpx.StreamError):
        for chunk in response.iter_bytes():
            got += chunk
            if len(got) >= ERROR_BODY_LIMIT or time.monotonic() > until:  # what came is enough to say what it was
                break
    return got[:ERROR_BODY_LIMIT]


def error_body(response: httpx.Response, limit: int = 300) -> str:
    """What the server said in an error answer, in one short line with every configured secret scrubbed (a
    server may echo the token): the JSON body's ``error`` and ``message``, else its text, else the reason."""
    raw = _body_bytes(response)
    try:
        text = raw.decode(response.charset_encoding or "utf-8", "replace")
    except LookupError:  # a charset Python does not know
        text = raw.decode("utf-8", "replace")
    try:
        body = json.loads(text)
    except (ValueError, RecursionError):
        body = None
    if isinstance(body, dict) and (body.get("error") or body.get("message")):
        said = [str(body[k]) for k in ("error", "message") if body.get(k)]
        text = ": ".join(dict.fromkeys(said))
    elif body is not None:
        text = str(body)
    return scrub(_short(text, limit) or response.reason_phrase)


@dataclass
class RetryPolicy:
    attempts: int = 6
    base_delay: float = 1.0
    max_delay: float = 30.0
    max_retry_after: float = 300.0


class Retryable(Exception):
    """Raised inside an attempt: this failure is worth another try (``wait``: what the server asked for)."""

    def __init__(self, last: str, wait: float | None = None):
        self.last, self.wait = scrub(last), wait  # shown in retry messages as it comes
        super().__init__(self.last)


def failure(response: httpx.Response, what: str | None = None) -> Retryable | ApiError | None:
    """What an answer's status means, the one rule for every request: None below 400; Retryable for 429 and
    5xx (the server's trouble: worth a wait, the one it asked for where it said); ApiError with the server's
    message for any other 4xx (a refusal retrying will not change). ``what`` names the request (redacted)."""
    status = response.status_code
    if status == 429 or status >= 500:
        said = error_body(response, 80) if "json" in response.headers.get("content-type", "") else ""
        return Retryable(f"HTTP {status}: {said}" if said else f"HTTP {status}", retry_wait(response))
    if status >= 400:
        return ApiError(status, what or redact(str(response.url)), error_body(response))
    return None


@contextlib.contextmanager
def transport_errors_retried() -> Iterator[None]:
    """Inside, a timeout or a dropped connection is Retryable, and a redirect loop httpx followed (the Hub's
    client) is a RedirectError."""
    try:
        yield
    except httpx.TooManyRedirects as exc:
        raise RedirectError("too-many", str(exc.request.url)) from None
    except (httpx.TimeoutException, httpx.TransportError) as exc:
        raise Retryable(type(exc).__name__) from None


def backoff(policy: RetryPolicy, attempt: int) -> float:
    """Exponential backoff with jitter: a uniform wait in [cap/2, cap]."""
    cap = min(policy.max_delay, policy.base_delay * 2**attempt)
    return random.uniform(cap / 2, cap)


def retrying(
    attempt: Callable[[], T],
    policy: RetryPolicy,
    what: str,
    *,
    sleep: Callable[[float], None] = time.sleep,
    on_retry: Callable[[str], None] | None = None,
) -> T:
    """Call ``attempt`` until it returns; it raises ``Retryable`` for failures worth another try. ``what`` names
    the request in the final error (already redacted)."""
    last = ""
    for n in range(policy.attempts):
        try:
            return attempt()
        except Retryable as exc:
            last, wait = exc.last, exc.wait
        if n + 1 == policy.attempts:
            break
        delay = min(wait, policy.max_retry_after) if wait is not None else backoff(policy, n)
        if on_retry:
            on_retry(f"{last}; retrying in {delay:.1f}s")
        sleep(delay)
    raise RetriesExhausted(what, policy.attempts, last)


class JsonClient:
    """A small JSON-over-HTTP client with the retry policy above. ``on_retry`` sees each retried failure. The
    token goes with each request where ``credentials_allowed`` says, redirects included (``open_redirected``)."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        policy: RetryPolicy | None = None,
        timeout: float = 30.0,
        on_retry: Callable[[str], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.policy = policy or RetryPolicy()
        self.on_retry = on_retry
        self._sleep = sleep
        self._token = token
        self.retries = 0
        self._client = new_client(base_url=base_url, headers={"Accept": "application/json"}, timeout=timeout)
        self._timeout = timeout

    def _deadline(self) -> float:
        """When an answer must have arrived whole: the timeout bounds each read, not a body dripped forever."""
        return time.monotonic() + 4 * self._timeout

    def close(self) -> None:
        self._client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _on_retry(self, message: str) -> None:
        self.retries += 1
        if self.on_retry:
            self.on_retry(message)

    def get(self, url: str, params: dict | list | None = None) -> tuple[object, httpx.Response]:
        """GET and parse JSON; returns (body, response) so callers can read headers such as ``Link``."""
        return self._request("GET", url, params=params)

    def post(self, url: str, body: object) -> tuple[object, httpx.Response]:
        """POST a JSON body and parse the JSON answer, with the same retries as ``get``."""
        return self._request("POST", url, json=body)

    def _request(self, method: str, url: str, **kw) -> tuple[object, httpx.Response]:
        def attempt() -> tuple[object, httpx.Response]:
            with transport_errors_retried():
                response = open_redirected(self._client, url, {}, self._token, method=method, stream=True, **kw)
                try:
                    problem = failure(response)  # reads at most ERROR_BODY_LIMIT of an error's body
                    if problem is not None:
                        raise problem
                    return _json_of(response.status_code, _capped_body(response, self._deadline())), response
                finally:
                    response.close()

        what = redact(url) if "://" in url else url
        return retrying(attempt, self.policy, what, sleep=self._sleep, on_retry=self._on_retry)


MAX_JSON_BYTES = 64 * 2**20  # an API page is a few MB at most: past this, a body is not an answer


def _capped_body(response: httpx.Response, deadline: float) -> bytes:
    """A JSON answer's body, read as it streams: refused past MAX_JSON_BYTES, and a body still arriving at
    ``deadline`` (a server dripping bytes, or one that never ends) is a failure worth another try."""
    got = bytearray()
    for chunk in response.iter_bytes():
        got += chunk
        if len(got) > MAX_JSON_BYTES:
            raise ApiError(response.status_code, redact(str(response.url)),
                           f"an answer of over {MAX_JSON_BYTES // 2**20} MB: refused, not read further")  # fmt: skip
        if time.monotonic() > deadline:
            raise Retryable(f"HTTP {response.status_code}: the answer was still arriving when its time was up")
    return bytes(got)


def _json_of(status: int, content: bytes) -> object:
    try:
        return orjson.loads(content)
    except ValueError:  # orjson.JSONDecodeError is a ValueError
        if b"\\ud" in content or b"\\uD" in content:
            # a lone surrogate escape ("\ud800"): JSON that orjson refuses and json reads (the registry makes the
            # text storable: crawler.registry.storable)
            with contextlib.suppress(ValueError):
                return json.loads(content)
        html = b"<html" in content[:512].lower()
        kind = "an HTML page" if html else "a body that is not JSON"
        raise Retryable(f"HTTP {status} with {kind} instead of JSON") from None


class RedirectError(CrawlError):
    """A redirect that leads nowhere usable or safe; ``kind``: login-wall | no-location | too-many |
    bad-scheme (not http or https) | private-address (refused by setting)."""

    def __init__(self, kind: str, url: str):
        self.kind, self.url = kind, url
        self.where = scrub(redact(url))  # a Location may carry anything, an echoed token too
        super().__init__(f"{kind}: {self.where}")

    def __reduce__(self):  # crosses from the crawl's fetch process
        return (RedirectError, (self.kind, self.url))


MAX_REDIRECTS = 5


def credentials_allowed(origin: str, url: str) -> bool:
    """Whether a request to ``url`` may carry the token meant for ``origin`` (the URL that was asked): the same
    scheme, host and port, and over https (plain http only to a loopback host: a local mirror or test server).
    A redirect to another host, another port, or from https down to http gets no credentials."""
    o, u = httpx.URL(origin), httpx.URL(url)
    if (u.scheme, u.host, u.port) != (o.scheme, o.host, o.port):
        return False
    return u.scheme == "https" or _is_loopback(u.host)


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _private_host(host: str) -> bool:
    """Whether ``host`` is or resolves to a loopback, private, link-local or otherwise non-public address."""
    import ipaddress
    import socket

    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False  # unresolvable: the request itself fails
    for address in addresses:
        ip = ipaddress.ip_address(str(address).split("%", 1)[0])
        if ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_reserved or ip.is_multicast:
            return True
    return False


def _refuse_private() -> bool:
    return settings.current().refuse_private_redirects


def checked_redirect(url: str, location: str | None) -> str:
    """Where a redirect from ``url`` to ``location`` leads, if it may be followed: an http(s) URL, not a login
    page, and (INPAINT_ADVISOR_REFUSE_PRIVATE_REDIRECTS=1) not a private or loopback address; else
    RedirectError."""
    if not location:
        raise RedirectError("no-location", url)
    try:
        target = httpx.URL(url).join(location)
    except (httpx.InvalidURL, ValueError):
        raise RedirectError("bad-scheme", location) from None
    if target.scheme not in ("http", "https"):
        raise RedirectError("bad-scheme", str(target))
    if "/login" in target.path:
        raise RedirectError("login-wall", str(target))
    if _refuse_private() and _private_host(target.host):
        raise RedirectError("private-address", str(target))
    return str(target)


def _redirect_method(method: str, status: int) -> str:
    """The method a redirect's next request uses, as browsers (and httpx) do: 303, and 301/302 after a POST,
    become GET; 307 and 308 keep the method and its body."""
    if (status == 303 and method != "HEAD") or (status in (301, 302) and method == "POST"):
        return "GET"
    return method


def open_redirected(client: httpx.Client, url: str, headers: dict, token: str | None, *, method: str = "GET",
                    params: dict | list | None = None, json: object = None,
                    stream: bool = True) -> httpx.Response:  # fmt: skip
    """The response for ``url`` (relative to the client's base URL, or absolute), redirects followed by hand:
    the one redirect policy of every request but huggingface_hub's own. The token goes only where
    ``credentials_allowed`` says (never to the signed storage Civitai redirects to, never after a downgrade to
    http); each hop must pass ``checked_redirect``; at most MAX_REDIRECTS. ``params`` go with the first request
    only (a Location is a whole URL). Streamed unless ``stream`` is False; the caller closes it."""
    origin: str | None = None
    for hop in range(MAX_REDIRECTS + 1):
        try:
            request = client.build_request(method, url, params=params if hop == 0 else None, json=json)
        except httpx.InvalidURL as exc:
            raise BadURL(f"{url} is not a usable URL ({exc})") from None
        origin = origin or str(request.url)
        request.headers.update(headers)
        if token and credentials_allowed(origin, str(request.url)):
            request.headers["Authorization"] = f"Bearer {token}"
        response = client.send(request, stream=stream)
        if response.status_code not in (301, 302, 303, 307, 308):
            return response
        response.close()
        if hop == MAX_REDIRECTS:
            break
        url = checked_redirect(str(request.url), response.headers.get("location"))
        after = _redirect_method(method, response.status_code)
        json = json if after == method else None  # a body goes on only where the method does
        method = after
    raise RedirectError("too-many", url)


# -- the client ---------------------------------------------------------------------------------------------------
DEFAULT_TIMEOUT = 30.0


def _identify(request: httpx.Request) -> None:
    """Our User-Agent first on every request, whatever a library set for it (huggingface_hub sends its own,
    which follows ours)."""
    ours, theirs = user_agent(), request.headers.get("user-agent", "")
    if not theirs.startswith(ours):
        theirs = theirs.removeprefix("unknown/None; ")  # huggingface_hub's stand-in for a library it was not told
        request.headers["User-Agent"] = f"{ours} {theirs}".strip()


def _refuse_bad_redirect(response: httpx.Response) -> None:
    """For a client whose redirects httpx follows: each one must pass ``checked_redirect`` (httpx itself drops
    the Authorization header on the way to another origin)."""
    if response.has_redirect_location:
        checked_redirect(str(response.url), response.headers.get("location"))


_contexts: dict[tuple[str, str], "ssl.SSLContext"] = {}


def _tls_context() -> "ssl.SSLContext":
    """The certificate store, loaded once per process and shared by every client (as httpx would load it:
    SSL_CERT_FILE, else SSL_CERT_DIR, else certifi's bundle). Loading it costs about 30 ms of CPU, which each new
    client paid again: a crawl, a lookup, each download."""
    import ssl

    key = settings.current().cert_store
    if key not in _contexts:
        try:
            _contexts[key] = httpx.create_ssl_context()
        except (OSError, ssl.SSLError) as exc:  # a file set by hand that is not there, or holds no certificate
            named = f"SSL_CERT_FILE={key[0]}" if key[0] else "of certifi"  # (httpx skips a folder it cannot read)
            raise CertificateStoreError(f"the certificate store {named} cannot be loaded "
                                        f"({getattr(exc, 'strerror', None) or exc}): fix or unset it") from None
    return _contexts[key]


def new_client(*, base_url: str = "", headers: dict[str, str] | None = None,
               timeout: float | httpx.Timeout | None = DEFAULT_TIMEOUT, follow_redirects: bool = False,
               event_hooks: dict[str, list[Callable]] | None = None) -> httpx.Client:  # fmt: skip
    """The one place an ``httpx.Client`` is made: our User-Agent, a timeout, and redirects not followed by
    httpx (``open_redirected`` follows them by our policy). ``follow_redirects`` is for huggingface_hub, which
    follows its own (renamed repos, LFS files): those redirects are held to ``checked_redirect`` and
    MAX_REDIRECTS. ``event_hooks`` run before ours."""
    given = event_hooks or {}
    checks: list[Callable] = [_refuse_bad_redirect] if follow_redirects else []
    hooks: dict[str, list[Callable]] = {"request": [*given.get("request", []), _identify],
                                        "response": [*given.get("response", []), *checks]}  # fmt: skip
    try:
        return httpx.Client(base_url=base_url, headers={"User-Agent": user_agent(), **(headers or {})},
                            timeout=timeout, follow_redirects=follow_redirects, max_redirects=MAX_REDIRECTS,
                            event_hooks=hooks, verify=_tls_context())  # fmt: skip
    except httpx.InvalidURL as exc:  # a mirror URL set by hand ("https://host:80a"): one line, not a traceback
        raise BadURL(f"{base_url} is not a usable URL ({exc})") from None


# -- secrets ------------------------------------------------------------------------------------------------------
