"""Dataclasses to JSON for ``--json``: datetimes as ISO 8601, sets as sorted lists."""

import dataclasses
import json
from datetime import datetime
from pathlib import Path


def _default(obj):
    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    if isinstance(obj, datetime):
        return obj.isoformat()
    if isinstance(obj, set | frozenset):
        return sorted(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def dumps(obj) -> str:
    if dataclasses.is_dataclass(obj):
        obj = dataclasses.asdict(obj)
    return json.dumps(obj, default=_default, indent=2, ensure_ascii=False)
