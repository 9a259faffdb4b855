"""Timestamps as sources write them (with or without a trailing ``Z``, with or without fractions), read as
UTC: a Civitai item's dates and a Hub repo's alike."""

import re
from datetime import UTC, datetime


def parse_dt(value) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    # Civitai writes UTC with or without the "Z".
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


_ISO_UTC = re.compile(r"(\d{4}-\d\d-\d\d)[T ](\d\d:\d\d:\d\d)(?:\.(\d{1,6}))?Z?")


def registry_dt(value) -> str | None:
    """A Civitai timestamp in the registry's stored form, "2023-01-01 00:03:00.000000" (naive UTC, the text
    SQLAlchemy writes for DateTime): the common shapes by slicing, the rest through ``parse_dt``. Strings in one
    fixed form compare like the instants they name, and cost a tenth of datetime objects to parse and store."""
    if not isinstance(value, str) or not value:
        return None
    if m := _ISO_UTC.fullmatch(value.strip()):
        return f"{m[1]} {m[2]}.{(m[3] or '').ljust(6, '0')}"
    parsed = parse_dt(value)
    # isoformat, not strftime: %Y writes year 999 as "999", which no parser reads back
    return parsed.replace(tzinfo=None).isoformat(" ", "microseconds") if parsed else None
