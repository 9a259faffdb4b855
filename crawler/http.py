"""The one HTTP layer every crawler request goes through: retries with backoff, clear errors, no token leaks.

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
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
import orjson

T = TypeVar("T")


@functools.cache
def user_agent() -> str:
    """``inpaint-advisor/<version>``: the version is the installed distribution's (pyproject.toml's), read once."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"inpaint-advisor/{version('inpaint-advisor')} (+https://github.com/inpaint-advisor)"
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "inpaint-advisor (+https://github.com/inpaint-advisor)"


_SECRET_PARAMS = {"token", "api_key", "apikey", "access_token"}


class CrawlError(Exception):
    """Base class: a request that could not be answered."""


class ApiError(CrawlError):
    """A 4xx answer: retrying will not help (bad cursor, not found, auth)."""

    def __init__(self, status: int, url: str, detail: str):
        self.status, self.url, self.detail = status, url, scrub(detail)  # a server may echo the token
        super().__init__(f"HTTP {status} from {url}: {self.detail}")

    def __reduce__(self):  # crosses from the crawl's fetch process
        return (ApiError, (self.status, self.url, self.detail))


class RetriesExhausted(CrawlError):
    def __init__(self, url: str, attempts: int, last: str):
        self.url, self.attempts, self.last = url, attempts, scrub(last)
        super().__init__(f"gave up on {url} after {attempts} attempts: {self.last}")

    def __reduce__(self):
        return (RetriesExhausted, (self.url, self.attempts, self.last))


def redact(url: str) -> str:
    """The URL without secret query parameters, for logs and error messages."""
    parts = urlsplit(url)
    query = [(k, "***" if k.lower() in _SECRET_PARAMS else v) for k, v in parse_qsl(parts.query, True)]
    return urlunsplit(parts._replace(query=urlencode(query, safe="*,:/")))


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


def _short(text: str, limit: int = 160) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    return text[:limit] + ("…" if len(text) > limit else "")


def _error_detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return _short(response.text) or response.reason_phrase
    if isinstance(body, dict):
        return str(body.get("error") or body.get("message") or body)[:300]
    return _short(str(body))


@dataclass
class RetryPolicy:
    attempts: int = 6
    base_delay: float = 1.0
    max_delay: float = 30.0
    max_retry_after: float = 300.0


class Retryable(Exception):
    """Raised inside an attempt: this failure is worth another try (``wait``: what the server asked for)."""

    def __init__(self, last: str, wait: float | None = None):
        self.last, self.wait = last, wait
        super().__init__(last)


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
    """A small JSON-over-HTTP client with the retry policy above. ``on_retry`` sees each retried failure."""

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
        headers = {"User-Agent": user_agent(), "Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.policy = policy or RetryPolicy()
        self.on_retry = on_retry
        self._sleep = sleep
        self.retries = 0
        self._client = httpx.Client(base_url=base_url, headers=headers, timeout=timeout, follow_redirects=True)

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
            try:
                response = self._client.request(method, url, **kw)
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                raise Retryable(type(exc).__name__) from None
            status = response.status_code
            if status == 429 or status >= 500:
                is_json = "json" in response.headers.get("content-type", "")
                detail = _short(response.text, 80) if is_json else ""
                raise Retryable(f"HTTP {status} {detail}".strip(), retry_wait(response))
            if status >= 400:
                raise ApiError(status, redact(str(response.url)), _error_detail(response))
            try:
                return orjson.loads(response.content), response
            except ValueError:  # orjson.JSONDecodeError is a ValueError
                if b"\\ud" in response.content or b"\\uD" in response.content:
                    # a lone surrogate escape ("\ud800"): JSON that orjson refuses and json reads (the registry
                    # makes the text storable: crawler.registry.storable)
                    with contextlib.suppress(ValueError):
                        return json.loads(response.content), response
                html = b"<html" in response.content[:512].lower()
                kind = "an HTML page" if html else "a body that is not JSON"
                raise Retryable(f"HTTP {status} with {kind} instead of JSON") from None

        what = redact(url) if "://" in url else url
        return retrying(attempt, self.policy, what, sleep=self._sleep, on_retry=self._on_retry)


class RedirectError(CrawlError):
    """A download redirect that leads nowhere usable or safe; ``kind``: login-wall | no-location | too-many |
    bad-scheme (not http or https) | private-address (refused by setting)."""

    def __init__(self, kind: str, url: str):
        super().__init__(f"{kind}: {redact(url)}")
        self.kind = kind


MAX_REDIRECTS = 5
REFUSE_PRIVATE = "INPAINT_ADVISOR_REFUSE_PRIVATE_REDIRECTS"  # "1": redirects to private/loopback hosts refused


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


def open_redirected(client: httpx.Client, url: str, headers: dict, token: str | None) -> httpx.Response:
    """A streamed response for ``url``, redirects followed by hand (the one redirect policy of downloads and
    proofs): the token goes only where ``credentials_allowed`` says (never to the signed storage Civitai
    redirects to, never after a downgrade to http); only http(s) redirects are followed; with
    INPAINT_ADVISOR_REFUSE_PRIVATE_REDIRECTS=1 (workers on a shared network) a redirect to a private or loopback
    address is refused. The caller closes the response."""
    import os

    origin = url
    refuse_private = os.environ.get(REFUSE_PRIVATE, "") not in ("", "0")
    for hop in range(MAX_REDIRECTS + 1):
        sent = dict(headers)
        if token and credentials_allowed(origin, url):
            sent["Authorization"] = f"Bearer {token}"
        response = client.send(client.build_request("GET", url, headers=sent), stream=True)
        if response.status_code not in (301, 302, 303, 307, 308):
            return response
        location = response.headers.get("location")
        response.close()
        if not location:
            raise RedirectError("no-location", url)
        try:
            url = str(httpx.URL(url).join(location))
        except (httpx.InvalidURL, ValueError):
            raise RedirectError("bad-scheme", location) from None
        if httpx.URL(url).scheme not in ("http", "https"):
            raise RedirectError("bad-scheme", url)
        if "/login" in urlsplit(url).path:
            raise RedirectError("login-wall", url)
        if refuse_private and hop < MAX_REDIRECTS and _private_host(httpx.URL(url).host):
            raise RedirectError("private-address", url)
    raise RedirectError("too-many", url)


# -- secrets ------------------------------------------------------------------------------------------------------
SECRET_VARIABLES = ("CIVITAI_API_TOKEN", "HF_TOKEN", "PGPASSWORD")
_URL_PASSWORD = re.compile(r"(://[^:/@\s]+:)[^@\s/]+(@)")


def scrub(text: str) -> str:
    """``text`` with every configured secret removed: the tokens and passwords of the environment (a server may
    echo a token in an error body) and the password of any URL in it. Applied to every message, JSON output
    and stored error."""
    import os

    for name in SECRET_VARIABLES:
        secret = os.environ.get(name, "")
        if len(secret) >= 4 and secret in text:
            text = text.replace(secret, "***")
    db = os.environ.get("INPAINT_ADVISOR_DB", "")
    match = _URL_PASSWORD.search(db)
    if match:
        password = db[match.end(1):match.start(2)]
        if len(password) >= 4 and password in text:
            text = text.replace(password, "***")
    return _URL_PASSWORD.sub(r"\1***\2", text)
