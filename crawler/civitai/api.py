"""Civitai: crawl every Checkpoint model into the registry, or fetch one model live for `lookup`.

Pages are fetched and parsed (``crawler.civitai.items``) in a second process (``crawler.civitai.feed``) while this one
writes the previous page.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import crawler.civitai.proof as civitai_proof
from crawler import links, registry
from crawler.civitai.feed import PageFeed
from crawler.civitai.items import parse_page
from crawler.http import ApiError, JsonClient, RetryPolicy
from data import base_models, settings

if TYPE_CHECKING:
    from crawler.registry import Registry

PAGE_SIZE = 100
# "Oldest" walks in ascending last-version time then id: it can repeat an item across a page boundary (deduped
# by upsert) but never skips one, unlike "Newest" and the metric sorts.
SORT = "Oldest"
PERIODS = [
    ("Day", timedelta(days=1)),
    ("Week", timedelta(days=7)),
    ("Month", timedelta(days=31)),
    ("Year", timedelta(days=365)),
]


def api_url(base_url: str | None = None) -> str:
    return base_url.rstrip("/") if base_url else settings.current().civitai_url


def token_from_env() -> str | None:
    return settings.current().civitai_token


LIVE_POLICY = RetryPolicy(attempts=2, base_delay=0.5, max_delay=2.0)


def fetch_items(*, model_id: str | None = None, version_id: str | None = None, file_hash: str | None = None,
                text: str | None = None, base_url: str | None = None,
                policy: RetryPolicy | None = None) -> list[dict]:  # fmt: skip
    """Civitai's items for one model (by model id, by version id, or by a file hash) or for a name search, for
    `lookup` of something the registry lacks. [] when Civitai has no such model; CrawlError when it cannot be
    asked."""
    with JsonClient(api_url(base_url), token=token_from_env(), policy=policy or LIVE_POLICY, timeout=10) as client:
        try:
            if text is not None:
                params = {"query": text[:200], "types": "Checkpoint", "nsfw": "true", "limit": "20"}
                body, _ = client.get("/api/v1/models", params=params)
                items = body.get("items") if isinstance(body, dict) else None
                return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []
            if model_id is None:
                by = f"by-hash/{file_hash}" if file_hash else str(version_id)
                body, _ = client.get(f"/api/v1/model-versions/{by}")
                found = body.get("modelId") if isinstance(body, dict) else None
                if not isinstance(found, int | str) or isinstance(found, bool) or not str(found).isdigit():
                    return []
                model_id = str(found)
            body, _ = client.get(f"/api/v1/models/{model_id}")
        except ApiError as exc:
            if exc.status == 404:
                return []
            raise
    return [body] if isinstance(body, dict) else []


BY_HASH_BATCH = 100  # what POST /model-versions/by-hash takes at most


def fetch_by_hashes(hashes: list[str], *, base_url: str | None = None,
                    policy: RetryPolicy | None = None) -> list[dict]:  # fmt: skip
    """The model items of the Checkpoint versions whose files have these SHA256s, asked in batches of 100
    (the files `scan` found that the registry does not know). CrawlError when Civitai cannot be asked."""
    model_ids: list[str] = []
    with JsonClient(api_url(base_url), token=token_from_env(), policy=policy or LIVE_POLICY, timeout=30) as client:
        for start in range(0, len(hashes), BY_HASH_BATCH):
            body, _ = client.post("/api/v1/model-versions/by-hash", hashes[start : start + BY_HASH_BATCH])
            for version in body if isinstance(body, list) else []:
                model = version.get("model") if isinstance(version, dict) else None
                mid = version.get("modelId") if isinstance(version, dict) else None
                if isinstance(model, dict) and model.get("type") not in (None, "Checkpoint"):
                    continue
                if isinstance(mid, int) and not isinstance(mid, bool) and str(mid) not in model_ids:
                    model_ids.append(str(mid))
        items = []
        for mid in model_ids:
            try:
                body, _ = client.get(f"/api/v1/models/{mid}")
            except ApiError as exc:
                if exc.status == 404:
                    continue
                raise
            if isinstance(body, dict):
                items.append(body)
    return items


def fetch_base_models(*, base_url: str | None = None, token: str | None = None,
                      policy: RetryPolicy | None = None) -> list[str] | None:  # fmt: skip
    """Civitai's list of base models as its API serves it (``GET /api/v1/enums``, ``BaseModel``); None when it
    cannot be had (a mirror without the endpoint, an answer of another shape, a network failure)."""
    from crawler.http import CrawlError

    try:
        with JsonClient(api_url(base_url), token=token or token_from_env(), policy=policy or LIVE_POLICY,
                        timeout=30) as client:  # fmt: skip
            body, _ = client.get("/api/v1/enums")
    except CrawlError:
        return None
    listed = body.get("BaseModel") if isinstance(body, dict) else None
    if not isinstance(listed, list) or not all(isinstance(bm, str) and 0 < len(bm) <= 100 for bm in listed):
        return None
    return listed[:1000]


def store_page(reg: Registry, items: list, run_id: int | None, next_cursor: str | None) -> registry.PageResult:
    """Parse and write one page of raw `/models` items (see ``Registry.store_page``), known header proofs applied."""
    parsed = parse_page(items)
    civitai_proof.apply_known(reg, parsed)
    return reg.store_page(parsed, run_id, next_cursor)


def period_for(since: datetime | None, now: datetime) -> str | None:
    """The narrowest Civitai ``period`` that covers everything changed since ``since`` (an hour of margin)."""
    if since is None:
        return None
    age = now - since + timedelta(hours=1)
    return next((name for name, span in PERIODS if age <= span), None)


@dataclass
class CrawlSummary(registry.RunSummary):
    models: int = 0
    versions: int = 0
    unknown_base_models: set[str] = field(default_factory=set)
    # base models Civitai lists (/api/v1/enums) that this release's copy of its list lacks: a gap of the tool
    new_base_models: list[str] = field(default_factory=list)
    # ambiguous versions proven from their files' headers (crawler.civitai.proof): files read (the unreadable
    # and gone ones included), each once
    headers_read: int = 0
    proofs_changed: int = 0  # versions whose verdict a header reversed
    # files read that are not a checkpoint or are malformed, and downloads gone (404, 410): recorded, never
    # asked again
    proofs_unreadable: int = 0
    # files not read (401/403 without an API key, 429, 5xx, a dropped connection): nothing recorded, read by a
    # later crawl (with CIVITAI_API_TOKEN where they need one)
    proofs_deferred: int = 0

    def run_counts(self) -> dict[str, int]:
        return {"headers_read": self.headers_read, "headers_unreadable": self.proofs_unreadable,
                "headers_deferred": self.proofs_deferred}  # fmt: skip


def crawl(
    reg: Registry,
    *,
    mode: str = "full",
    base_url: str | None = None,
    token: str | None = None,
    policy: RetryPolicy | None = None,
    max_pages: int | None = None,
    on_page: Callable[[CrawlSummary], None] | None = None,
    on_retry: Callable[[str], None] | None = None,
    proof_budget: int = civitai_proof.BUDGET,
) -> CrawlSummary:
    """Crawl every Checkpoint model; then read the file headers of up to ``proof_budget`` versions whose
    metadata is ambiguous (crawler.civitai.proof). ``mode="incremental"`` asks only for models changed since the last
    successful run. A run that was killed or failed is resumed from its last committed page."""
    base_url = api_url(base_url)
    token = token or token_from_env()
    since = period = None
    if mode == "incremental":
        last = reg.last_successful_run("civitai")
        since = last.started_at if last else None
        period = period_for(since, registry.utcnow())
    started = reg.start_run("civitai", mode, since=since, period=period)
    run = started.run
    summary = CrawlSummary(run_id=started.run_id, mode=mode, resumed=started.resumed)
    params = {"types": "Checkpoint", "nsfw": "true", "limit": str(PAGE_SIZE), "sort": SORT}
    if run.period:
        params["period"] = run.period

    feed = PageFeed(base_url, token, policy or RetryPolicy(), params, run.cursor, max_pages)
    try:
        next_cursor = run.cursor
        for page in feed:
            if isinstance(page, str):  # a retried failure, reported by the fetch process
                if on_retry:
                    on_retry(page)
                continue
            parsed, next_cursor, retries = page
            civitai_proof.apply_known(reg, parsed)
            stored = reg.store_page(parsed, run.id, next_cursor)
            summary.pages += 1
            summary.models += stored.models
            summary.versions += stored.versions
            summary.written += stored.written
            summary.new_inpainting += stored.new_inpainting
            summary.unknown_base_models |= stored.unknown_base_models
            summary.retries = retries
            if on_page:
                on_page(summary)
        if next_cursor is not None:  # stopped by max_pages: leave the run resumable
            summary.status, summary.note = "stopped", registry.stopped_note(summary.pages)
            reg.finish_run(run, "stopped", None, summary)
            return summary
        proved = civitai_proof.prove_pending(reg, base_url, token, budget=proof_budget)
        summary.headers_read, summary.proofs_changed = proved.read, proved.changed
        summary.proofs_unreadable, summary.proofs_deferred = proved.unreadable, proved.deferred
        for url, reason in proved.failures:
            summary.note_error("civitai", url, reason)
        summary.new_links = links.link_sibling_models(reg)
        listed = fetch_base_models(base_url=base_url, token=token, policy=policy)
        if listed is not None:
            reg.record_civitai_base_models(listed)
            summary.new_base_models = sorted(bm for bm in listed if base_models.civitai_base_model(bm) is None)
        summary.status = "ok"
        reg.finish_run(run, "ok", None, summary)
    except BaseException as exc:
        reg.record_run_failure(run, summary, exc)
        raise
    finally:
        feed.close()
    return summary
