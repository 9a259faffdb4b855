"""Is the registry being kept fresh? The answer a monitor (or `status --check`) acts on.

Unhealthy when a source that is crawled here has no successful crawl within the limit, when its newest crawl
failed, or when an official checkpoint the advice points at is gone or changed. A source never crawled here is
reported, not counted against the registry, unless no source was ever crawled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from crawler import families

if TYPE_CHECKING:
    from crawler.registry import Registry


@dataclass
class SourceHealth:
    source: str
    models: int
    last_success: datetime | None
    age_s: float | None  # seconds since the last successful crawl finished
    last_status: str | None
    last_error: str | None
    healthy: bool
    reasons: list[str] = field(default_factory=list)


@dataclass
class Health:
    healthy: bool
    max_age_s: float
    checked_at: datetime
    sources: list[SourceHealth]
    officials_gone: list[str]  # "sd1 inpaint: repo/file (detail)"
    coverage: dict[str, float]  # family -> share of its models with an inpainting release
    reasons: list[str]
    # what the tool does not know yet (base models without data, Civitai's newer ones): reported, never
    # counted against the registry's health
    gaps: list[str] = field(default_factory=list)


def check(reg: Registry, max_age: timedelta, *, now: datetime | None = None) -> Health:
    now = now or datetime.now(UTC)
    sources, reasons = [], []
    for s in reg.source_runs():
        h = SourceHealth(s.source, s.models, s.last_success,
                         (now - s.last_success).total_seconds() if s.last_success else None, s.last_status,
                         s.last_error, True)  # fmt: skip
        if s.last_status is None:
            h.reasons.append("never crawled here")
        else:
            if s.last_success is None:
                h.reasons.append("no crawl has succeeded yet")
            elif h.age_s is not None and h.age_s > max_age.total_seconds():
                limit = _ago(max_age.total_seconds())
                h.reasons.append(f"last successful crawl {_ago(h.age_s)} ago, over the limit of {limit}")
            if s.last_status == "failed":
                h.reasons.append(f"the last crawl failed: {(s.last_error or 'no message')[:200]}")
            h.healthy = not h.reasons
        sources.append(h)
        reasons += [f"{s.source}: {r}" for r in h.reasons if s.last_status is not None]
    if all(s.last_status is None for s in sources):
        reasons.append("no source was ever crawled into this registry")
    st = reg.status(recent_runs=0)
    gone = officials_gone(st.officials)
    reasons += [f"official checkpoint gone or changed: {g}" for g in gone]
    coverage = {f.family: round(f.coverage, 4) for f in st.families}
    gaps = [f"no data for base model {bm}: {n} versions" + (f" (e.g. {', '.join(st.unknown_examples[bm])})"
                                                             if st.unknown_examples.get(bm) else "")
            for bm, n in st.unknown_base_models]  # fmt: skip
    gaps += [f"Civitai lists base model {bm}, which this release does not know" for bm in st.civitai_lists_unknown]
    return Health(not reasons, max_age.total_seconds(), now, sources, gone, coverage, reasons, gaps)


def officials_gone(officials: list) -> list[str]:
    """The official checkpoints the advice cannot point at any more: for each family's inpainting model and
    base, the mirrors that failed their last check, counted only when no mirror of that checkpoint serves the
    file (the advice then names the live one) and only where data/families.json expects the mirror alive (one
    it marks deleted is known, not news: counting it made a monitor alert for ever)."""
    by_checkpoint: dict[tuple[str, str], list] = {}
    for o in officials:
        by_checkpoint.setdefault((o.family, o.role), []).append(o)
    gone = []
    for (family_id, role), checks in by_checkpoint.items():
        live = [o.repo for o in checks if o.alive and o.matches]
        if live:
            continue
        known_dead = {m["repo"].lower() for m in ((families.family(family_id) or {}).get(role) or {}).get("mirrors", [])
                      if m.get("alive") is False}  # fmt: skip
        gone += [f"{o.family} {o.role}: {o.repo}/{o.file or ''} ({o.detail})" for o in checks
                 if o.repo.lower() not in known_dead]  # fmt: skip
    return gone


def _ago(seconds: float) -> str:
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:.1f} d"
    if seconds >= 2 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min"
