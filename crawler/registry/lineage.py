"""The queries behind families through chains of Hugging Face repos (``crawler.hf.resolve_lineage``)."""

from sqlalchemy import select, update
from sqlalchemy.engine import Engine

from crawler.registry.schema import FAMILY, MODEL, VERSION


def hf_families(engine: Engine) -> tuple[dict[str, tuple[str | None, str | None]], dict[str, str | None]]:
    """({hf model id: (declared base repo, family)}, {family: parent family})."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(MODEL.c.id, MODEL.c.base_model, MODEL.c.family).where(MODEL.c.source == "hf")
        ).all()
        parents: dict[str, str | None] = dict(conn.execute(select(FAMILY.c.id, FAMILY.c.parent)).all())
    return {r.id: (r.base_model, r.family) for r in rows}, parents


def set_families(engine: Engine, changed: dict[str, str]) -> None:
    """Model id -> its new family, for the model and all its versions."""
    if not changed:
        return
    with engine.begin() as conn:
        for model_id, family in changed.items():
            conn.execute(update(MODEL).where(MODEL.c.id == model_id).values(family=family))
            conn.execute(update(VERSION).where(VERSION.c.model_id == model_id).values(family=family))
