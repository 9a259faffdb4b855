"""Every source in turn, as one job (what a timer runs): one source failing does not stop the others."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from crawler import sources
from crawler.http import CrawlError, RetryPolicy

if TYPE_CHECKING:
    from crawler.registry import Registry


@dataclass
class SourceResult:
    source: str
    status: str  # ok | failed | locked | stopped (max_pages reached: resumable)
    seconds: float
    summary: object | None = None  # the source's own CrawlSummary / HfCrawlSummary
    error: str | None = None


@dataclass
class AllSummary:
    mode: str
    sources: list[SourceResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(s.status in ("ok", "stopped") for s in self.sources)

    def __json__(self) -> dict:
        return {"mode": self.mode, "ok": self.ok, "sources": self.sources}


def crawl_all(reg: Registry, *, incremental: bool = False, civitai_url: str | None = None,
              hf_endpoint: str | None = None, policy: RetryPolicy | None = None,
              on_page: Callable[[str, object], None] | None = None,
              on_retry: Callable[[str], None] | None = None) -> AllSummary:  # fmt: skip
    """Crawl Civitai, then the Hugging Face Hub (with its official-checkpoint checks), into ``reg``.
    A source that fails or is being crawled by someone else is recorded as such, and the next one runs."""
    from crawler.registry import CrawlLocked

    mode = "incremental" if incremental else "full"
    result = AllSummary(mode)
    urls = {"civitai": civitai_url, "hf": hf_endpoint}
    for source in sources.NAMES:
        t0 = time.perf_counter()
        page = (lambda s, source=source: on_page(source, s)) if on_page else None
        try:
            summary = sources.get(source).crawl(reg, mode=mode, url=urls.get(source), policy=policy,
                                                on_page=page, on_retry=on_retry)  # fmt: skip
            status = "ok" if summary.status == "ok" else "stopped"
            result.sources.append(SourceResult(source, status, time.perf_counter() - t0, summary))
        except CrawlLocked as exc:
            result.sources.append(SourceResult(source, "locked", time.perf_counter() - t0, error=str(exc)))
        except (CrawlError, ValueError) as exc:
            result.sources.append(SourceResult(source, "failed", time.perf_counter() - t0, error=str(exc)))
    return result
