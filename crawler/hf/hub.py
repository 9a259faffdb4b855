"""The Hugging Face Hub, as the crawler needs it: listing pages, model info, small JSON files and safetensors
headers, every request retried the same way (domain.md section 3).

Listing pages go through our own client rather than ``HfApi.list_models``: the crawl must commit each page with
the ``Link`` URL of the next one to resume after a kill, and huggingface_hub neither exposes that cursor nor
retries the first page. ``model_info`` and safetensors header reads use huggingface_hub, wrapped in the same
retry loop (it does not retry them itself), and through a client from ``crawler.http.new_client`` (our
User-Agent, timeouts and redirect rules). The endpoint is always passed explicitly: ``HF_ENDPOINT`` is read by
huggingface_hub once, at import.
"""

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import httpx

from crawler.http import (
    ApiError,
    CrawlError,
    JsonClient,
    RetryPolicy,
    Unavailable,
    failure,
    new_client,
    redact,
    retrying,
    transport_errors_retried,
)
from data import settings
from merge.header import TensorInfo

if TYPE_CHECKING:
    from huggingface_hub import HfApi


_factory_lock = threading.Lock()
_factory_installed = False


def _hub_client() -> httpx.Client:
    """huggingface_hub's shared client, made by our factory: its request hook (offline mode, request ids) kept,
    and its redirects followed by httpx as huggingface_hub needs (a renamed repo answers ``model_info`` with a
    307, an LFS file with a 302 to its CDN) under our rules (``crawler.http.new_client``)."""
    from huggingface_hub.utils._http import hf_request_event_hook

    return new_client(follow_redirects=True, event_hooks={"request": [hf_request_event_hook]})


def use_our_client() -> None:
    """Have huggingface_hub make its client with ``_hub_client``, once per process."""
    global _factory_installed
    with _factory_lock:
        if not _factory_installed:
            import huggingface_hub

            huggingface_hub.set_client_factory(_hub_client)
            _factory_installed = True


class RepoUnavailable(Unavailable):
    """Deleted, private or gated: the Hub answers 401/403 ("Repository Not Found", ``GatedRepo``)."""

    def __init__(self, repo: str, reason: str, status: int):
        self.repo = repo
        super().__init__(repo, reason, status)


class FileMissing(CrawlError):
    def __init__(self, repo: str, path: str):
        self.repo, self.path = repo, path
        super().__init__(f"{repo} has no file {path}")


def endpoint_from_env(explicit: str | None = None) -> str:
    return explicit.rstrip("/") if explicit else settings.current().hf_endpoint


@dataclass
class Page:
    items: list[dict]
    next_url: str | None  # path and query of the next page (the endpoint is not stored)


class Hub:
    def __init__(
        self,
        endpoint: str | None = None,
        token: str | None = None,
        *,
        policy: RetryPolicy | None = None,
        timeout: float = 30.0,
        on_retry: Callable[[str], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.endpoint = endpoint_from_env(endpoint)
        self.token = token if token is not None else settings.current().hf_token
        self.policy = policy or RetryPolicy()
        self.timeout = timeout
        self.on_retry = on_retry
        self.retries = 0
        self._sleep = sleep
        self._json = JsonClient(self.endpoint, token=self.token, policy=self.policy, timeout=timeout,
                                on_retry=self._count_retry, sleep=sleep)  # fmt: skip
        self._api: HfApi | None = None

    def close(self) -> None:
        self._json.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def api(self):
        if self._api is None:
            from huggingface_hub import HfApi

            use_our_client()
            # token=False: never fall back to a token saved on disk by another tool unless HF_TOKEN says so
            self._api = HfApi(endpoint=self.endpoint, token=self.token or False)
        return self._api

    def _count_retry(self, message: str) -> None:
        self.retries += 1
        if self.on_retry:
            self.on_retry(message)

    # -- listing ----------------------------------------------------------------------------------------------
    def list_page(self, url: str, params: list[tuple[str, str]] | None = None) -> Page:
        body, response = self._json.get(url, params=params)
        if not isinstance(body, list):
            raise ApiError(200, redact(str(response.url)), "expected a JSON list of models")
        next_link = response.links.get("next", {}).get("url")
        return Page([i for i in body if isinstance(i, dict) and isinstance(i.get("id"), str)], _path(next_link))

    # -- one repo ---------------------------------------------------------------------------------------------
    def _call(self, what: str, fn, repo: str, path: str | None = None):
        from huggingface_hub.errors import (
            GatedRepoError,
            HfHubHTTPError,
            OfflineModeIsEnabled,
            RemoteEntryNotFoundError,
            RepositoryNotFoundError,
            SafetensorsParsingError,
        )

        def attempt():
            try:
                with transport_errors_retried():
                    return fn()
            except GatedRepoError as exc:
                raise RepoUnavailable(repo, "gated: accept its licence on the Hub and set HF_TOKEN",
                                      _status(exc)) from None  # fmt: skip
            except RepositoryNotFoundError as exc:
                raise RepoUnavailable(repo, "repository not found (deleted or private)", _status(exc)) from None
            except RemoteEntryNotFoundError:
                raise FileMissing(repo, path or "?") from None
            except SafetensorsParsingError as exc:
                raise ApiError(200, what, f"not a readable safetensors header ({exc})") from None
            except HfHubHTTPError as exc:
                raise _failure(exc, what) from None
            except OfflineModeIsEnabled:
                raise CrawlError("HF_HUB_OFFLINE is set: unset it to reach the Hugging Face Hub") from None
            except ValueError as exc:
                # a stranger's repo huggingface_hub cannot take: an id it refuses (HFValidationError), a date it
                # cannot parse, a file name that is not text (UnicodeEncodeError): this repo's error, not the crawl's
                raise ApiError(200, what, f"an answer huggingface_hub cannot read: {_first_line(exc)}") from None

        return retrying(attempt, self.policy, what, sleep=self._sleep, on_retry=self._count_retry)

    def model_info(self, repo: str, *, files_metadata: bool = False):
        """huggingface_hub's ``ModelInfo``; ``files_metadata`` adds sizes and ``lfs.sha256`` per file."""
        return self._call(
            f"{self.endpoint}/api/models/{repo}",
            lambda: self.api.model_info(repo, files_metadata=files_metadata, timeout=self.timeout),
            repo,
        )

    def read_json(self, repo: str, revision: str, path: str) -> dict:
        """A small JSON file of a repo (``unet/config.json``) through the resolve endpoint."""
        try:
            body, _ = self._json.get(f"/{settings.url_part(repo)}/resolve/{settings.url_part(revision)}/"
                                     f"{settings.url_part(path)}")  # fmt: skip
        except ApiError as exc:
            if exc.status in (401, 403):
                raise RepoUnavailable(repo, "gated or private", exc.status) from None
            if exc.status == 404:
                raise FileMissing(repo, path) from None
            raise
        if not isinstance(body, dict):
            raise ApiError(200, f"{repo}/{path}", "expected a JSON object")
        return body

    def safetensors_header(self, repo: str, revision: str, path: str) -> dict[str, TensorInfo]:
        """Tensor names, dtypes and shapes of a remote safetensors file from a range read of its header."""
        meta = self._call(
            f"{self.endpoint}/{repo}/resolve/{revision}/{path}",
            lambda: self.api.parse_safetensors_file_metadata(repo, path, revision=revision, timeout=self.timeout),
            repo,
            path,
        )
        return {name: TensorInfo(t.dtype, tuple(t.shape)) for name, t in meta.tensors.items()}


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0].rstrip(".") if lines else type(exc).__name__


def _failure(exc, what: str) -> Exception:
    """An HfHubHTTPError by the one rule of ``crawler.http.failure`` (429/5xx retried, other 4xx refused)."""
    response = getattr(exc, "response", None)
    problem = failure(response, what) if response is not None else None
    return problem or ApiError(_status(exc), what, str(exc).splitlines()[0])


def _status(exc) -> int:
    response = getattr(exc, "response", None)
    return response.status_code if response is not None else 0


def _path(url: str | None) -> str | None:
    if not url:
        return None
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")
