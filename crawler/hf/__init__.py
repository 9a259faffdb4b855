"""The Hugging Face Hub, one of the registry's sources (``crawler.sources``).

Its modules:
- ``repos``: ``crawl`` walks the repos that descend from the bases in data/ (and checks the official
  checkpoints' mirrors); ``fetch_one`` asks about one repo for `lookup`;
- ``inspect``: what a repo's checkpoints are, proven from their files;
- ``officials``: the official checkpoints' and routes' files, checked on the Hub;
- ``hub``: the client;
- ``source``: the interface the rest of the tool uses.

Importing this package is cheap: the client loads with the first name asked of it.
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from crawler.hf.repos import HfCrawlSummary, crawl, fetch_one

__all__ = ["HfCrawlSummary", "crawl", "fetch_one"]


def __getattr__(name: str):
    if name in __all__:
        from crawler.hf import repos

        return getattr(repos, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
