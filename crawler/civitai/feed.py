"""Pages for the crawl, fetched and parsed in a second process so that both cores work: one downloads,
decodes and parses page N+1 while the crawl process writes page N.

Items on the queue, in order: a parsed page ``(models, next_cursor, retries)``, a retry message (str), an
exception to re-raise in the crawl process, and finally ``None``. The queue is bounded, so the fetch process
never runs more than a few pages ahead, and it exits on its own if the crawl process dies (a kill -9 must not
leave a crawler running without its writer).
"""

import multiprocessing as mp
import os
import queue as queue_mod
from collections.abc import Iterator

from crawler.civitai.items import parse_page
from crawler.http import JsonClient, RetryPolicy

AHEAD = 3  # pages parsed ahead of the writer


def _put(q, item, parent: int) -> bool:
    while True:
        try:
            q.put(item, timeout=0.5)
            return True
        except queue_mod.Full:
            if os.getppid() != parent:
                return False


def _fetch_pages(base_url, token, policy, params, cursor, max_pages, q, parent) -> None:
    def on_retry(msg: str) -> None:
        _put(q, msg, parent)

    client = JsonClient(base_url, token=token, policy=policy, on_retry=on_retry)
    try:
        pages = 0
        while True:
            if os.getppid() != parent:
                return
            body, _ = client.get("/api/v1/models", params=params | ({"cursor": cursor} if cursor else {}))
            if not isinstance(body, dict) or not isinstance(body.get("items"), list):
                raise ValueError(f"unexpected /models answer: {str(body)[:120]}")
            meta = body.get("metadata")
            if not isinstance(meta, dict):
                meta = {}
            nxt = meta.get("nextCursor")
            cursor = str(nxt) if nxt not in (None, "") else None
            pages += 1
            if not _put(q, (parse_page(body["items"]), cursor, client.retries), parent):
                return
            if cursor is None or (max_pages is not None and pages >= max_pages):
                break
        _put(q, None, parent)
    except BaseException as exc:  # noqa: BLE001 - handed to the crawl process to re-raise
        _put(q, exc, parent)
    finally:
        client.close()
        if os.getppid() != parent:
            # Nobody will read what is still buffered for the pipe: exiting must not wait to flush it (the
            # process would hang forever after a kill -9 of the crawl).
            q.cancel_join_thread()


class PageFeed:
    def __init__(self, base_url: str, token: str | None, policy: RetryPolicy, params: dict, cursor: str | None,
                 max_pages: int | None):  # fmt: skip
        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context("spawn")
        self._q = ctx.Queue(maxsize=AHEAD)
        args = (base_url, token, policy, params, cursor, max_pages, self._q, os.getpid())
        self._proc = ctx.Process(target=_fetch_pages, args=args, daemon=True, name="civitai-fetch")
        self._proc.start()

    def __iter__(self) -> Iterator:
        while True:
            try:
                item = self._q.get(timeout=1.0)
            except queue_mod.Empty:
                if not self._proc.is_alive() and self._q.empty():
                    raise RuntimeError(f"the fetch process died (exit code {self._proc.exitcode})") from None
                continue
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        if self._proc.is_alive():
            self._proc.terminate()
        self._proc.join(5)
        self._q.close()
        self._q.cancel_join_thread()
