"""Civitai, one of the registry's sources (``crawler.sources``).

Its modules:
- ``api``: the REST API: ``crawl`` walks every Checkpoint model; ``fetch_items`` and ``fetch_by_hashes`` ask
  about one model or a batch of file hashes for `lookup` and `scan`;
- ``items``: the API's items as registry rows;
- ``proof``: ambiguous versions settled from their files' headers;
- ``feed``: pages fetched and parsed in a second process while this one writes;
- ``source``: the interface the rest of the tool uses.

Importing this package is cheap: the API client loads with the first name asked of it.
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from crawler.civitai.api import (
        CrawlSummary,
        api_url,
        crawl,
        fetch_by_hashes,
        fetch_items,
        store_page,
        token_from_env,
    )

__all__ = ["CrawlSummary", "api_url", "crawl", "fetch_by_hashes", "fetch_items", "store_page", "token_from_env"]


def __getattr__(name: str):
    if name in __all__:
        from crawler.civitai import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
