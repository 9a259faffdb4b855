"""Every environment variable inpaint-advisor reads is read here, and only here, into a frozen ``Settings``;
data/settings.json documents each one and tests/test_docs.py holds the two together. The sites' URLs are built
from it too, so that what `lookup` prints and what `build` fetches come from the same place.

``current()`` reads the environment each time it is called (a few dictionary lookups) into a frozen value, so a
variable set later (a test, a scheduled run's env file) is heard at the next call. CLI options go on top of it:
a function given an explicit value uses that value; typer's ``envvar=`` options are the one other reader, and
data/settings.json lists those variables too.
"""

import os
import re
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

CIVITAI = "https://civitai.com"  # one site under several hosts; the API lists NSFW models with nsfw=true on each
HUB = "https://huggingface.co"
SECRETS = ("CIVITAI_API_TOKEN", "HF_TOKEN", "PGPASSWORD")  # never printed (scrub, below), never stored


def _public(url: str) -> str:
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return parts._replace(netloc=host).geturl()


_SURROGATE = re.compile("[\ud800-\udfff]")


def url_part(text: str, safe: str = "/") -> str:
    """A stranger's name (a repo id, a file name) as part of a URL's path: ``?`` and ``#`` escaped, and a lone
    surrogate, which no URL can carry, as U+FFFD (as the registry stores it)."""
    return quote(_SURROGATE.sub("\ufffd", text), safe=safe)


def _set(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


def _optional_seconds(value: str | None) -> float | None:
    """Seconds if the variable is set to a number (0 included), else None (the caller's default)."""
    try:
        return float(value) if value else None
    except ValueError:
        return None


def _seconds(value: str | None, default: float) -> float:
    try:
        return float(value) if value else default
    except ValueError:  # a typo in a timing falls back to the default rather than stopping the worker
        return default


@dataclass(frozen=True)
class Sites:
    """Where Civitai and the Hub are (the public sites, a mirror or a local replay), and their URLs."""

    civitai_url: str = CIVITAI
    hf_endpoint: str = HUB

    def civitai_page(self, model_id: str, version_id: str | None = None) -> str:
        page = f"{self.civitai_url}/models/{quote(model_id, safe='')}"
        return page + (f"?modelVersionId={quote(version_id, safe='')}" if version_id else "")

    def civitai_download(self, version_id: str, file_id: str | None = None) -> str:
        """A version's download; with ``file_id`` that very file (without it Civitai picks the primary file by the
        API key owner's file preferences, which may not be the file whose SHA256 was recorded)."""
        url = f"{self.civitai_url}/api/download/models/{quote(version_id, safe='')}"
        return url + (f"?fileId={quote(file_id, safe='')}" if file_id else "")

    def hub_page(self, repo: str) -> str:
        return f"{self.hf_endpoint}/{url_part(repo)}"

    def hub_file(self, repo: str, file: str) -> str:
        return f"{self.hf_endpoint}/{url_part(repo)}/resolve/main/{url_part(file)}"


@dataclass(frozen=True)
class Settings:
    db: str | None  # the registry: a path or a URL (else the data-dir default: crawler.registry.location)
    civitai_url: str  # Civitai's site and API (a mirror or a local replay), no trailing slash
    civitai_token: str | None
    hf_endpoint: str  # the Hub (a mirror or a local replay), no trailing slash
    hf_token: str | None
    hf_cache: str | None  # huggingface_hub's cache as the environment says now (it reads it once, at import)
    cache: str | None  # where hashes, downloads and prepared pairs go (else the user cache dir)
    stall_seconds: float | None  # a download with no byte for this long is retried (None: the default)
    refuse_private_redirects: bool
    no_kernel: bool  # the merge's C loop switched off
    cuda_hidden: bool  # CUDA_VISIBLE_DEVICES hides every GPU
    worker_heartbeat: float
    worker_stall_after: float
    retry_wait: float
    recover_cron: str
    crawl_cron: str | None
    config_home: str | None  # XDG_CONFIG_HOME
    cert_store: tuple[str, str]  # (SSL_CERT_FILE, SSL_CERT_DIR), as httpx reads them

    @property
    def sites(self) -> Sites:
        """The sites as answers print them: a mirror's user and password (``https://user:pw@host``) stay in the
        settings, for the requests, and out of every printed page, download and command."""
        return Sites(_public(self.civitai_url), _public(self.hf_endpoint))


def current() -> Settings:
    hf_home = os.environ.get("HF_HOME")
    return Settings(
        db=os.environ.get("INPAINT_ADVISOR_DB") or None,
        civitai_url=(os.environ.get("INPAINT_ADVISOR_CIVITAI_URL") or CIVITAI).rstrip("/"),
        civitai_token=os.environ.get("CIVITAI_API_TOKEN") or None,
        hf_endpoint=(os.environ.get("HF_ENDPOINT") or HUB).rstrip("/"),
        hf_token=os.environ.get("HF_TOKEN") or None,
        hf_cache=os.environ.get("HF_HUB_CACHE") or (os.path.join(hf_home, "hub") if hf_home else None),
        cache=os.environ.get("INPAINT_ADVISOR_CACHE") or None,
        stall_seconds=_optional_seconds(os.environ.get("INPAINT_ADVISOR_STALL_SECONDS")),
        refuse_private_redirects=_set("INPAINT_ADVISOR_REFUSE_PRIVATE_REDIRECTS"),
        no_kernel=_set("INPAINT_ADVISOR_NO_KERNEL"),
        cuda_hidden=os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"),
        worker_heartbeat=_seconds(os.environ.get("INPAINT_ADVISOR_WORKER_HEARTBEAT"), 10),
        worker_stall_after=_seconds(os.environ.get("INPAINT_ADVISOR_WORKER_STALL_AFTER"), 60),
        retry_wait=_seconds(os.environ.get("INPAINT_ADVISOR_RETRY_WAIT"), 5),
        recover_cron=os.environ.get("INPAINT_ADVISOR_RECOVER_CRON") or "* * * * *",
        crawl_cron=os.environ.get("INPAINT_ADVISOR_CRAWL_CRON") or None,
        config_home=os.environ.get("XDG_CONFIG_HOME") or None,
        cert_store=(os.environ.get("SSL_CERT_FILE", ""), os.environ.get("SSL_CERT_DIR", "")),
    )


# what a scheduled crawl carries over from the shell that installed it: the registry and endpoints, no tokens
CARRIED = ("INPAINT_ADVISOR_DB", "INPAINT_ADVISOR_CIVITAI_URL", "HF_ENDPOINT", "INPAINT_ADVISOR_CACHE", "HF_HOME",
           "HF_HUB_CACHE")  # fmt: skip


def carried() -> dict[str, str]:
    """The CARRIED variables that are set, as they are."""
    return {name: os.environ[name] for name in CARRIED if os.environ.get(name)}


def apply(values: dict[str, str]) -> None:
    """Set variables for the rest of this process (a scheduled run's env file)."""
    os.environ.update(values)


def limit_blas_threads() -> None:
    """One BLAS thread unless the user asked for more: the merge's own threads do the work."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


_URL_PASSWORD = re.compile(r"(://[^:/@\s]+:)[^@\s/]+(@)")
_SECRET_PARAMS = {"token", "api_key", "apikey", "access_token"}


def redact(url: str) -> str:
    """The URL without secret query parameters, for logs and error messages."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    parts = urlsplit(url)
    query = [(k, "***" if k.lower() in _SECRET_PARAMS else v) for k, v in parse_qsl(parts.query, True)]
    return urlunsplit(parts._replace(query=urlencode(query, safe="*,:/")))


def scrub(text: str) -> str:
    """``text`` with every configured secret removed: the tokens and passwords of the environment (a server may
    echo a token in an error body) and the password of any URL in it. Applied to every message, JSON output
    and stored error. Reads only the variables it needs: the renderer calls it for every piece of text."""
    for secret_variable in SECRETS:
        secret = os.environ.get(secret_variable, "")
        if len(secret) >= 4:  # shorter ones would blank out ordinary text
            text = text.replace(secret, "***")
    db = os.environ.get("INPAINT_ADVISOR_DB", "")
    match = _URL_PASSWORD.search(db)
    if match:
        password = db[match.end(1):match.start(2)]
        if len(password) >= 4 and password in text:
            text = text.replace(password, "***")
    return _URL_PASSWORD.sub(r"\1***\2", text)
