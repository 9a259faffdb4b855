"""The queries behind families through chains of Hugging Face repos (``crawler.hf.resolve_lineage``)."""

from sqlalchemy import select, update
from sqlalchemy.engine import Engine
from sqlmodel import col

from crawler.registry.schema import Family, Model, Version


def hf_families(engine: Engine) -> tuple[dict[str, tuple[str | None, str | None]], dict[str, str | None]]:
    """({hf model id: (declared base repo, family)}, {family: parent family})."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(col(Model.id), col(Model.base_model), col(Model.family)).where(col(Model.source) == "hf")
        ).all()
        parents: dict[str, str | None] = dict(conn.execute(select(col(Family.id), col(Family.parent))).all())
    return {r.id: (r.base_model, r.family) for r in rows}, parents


def set_families(engine: Engine, changed: dict[str, str]) -> None:
    """Model id -> its new family, for the model and all its versions."""
    if not changed:
        return
    with engine.begin() as conn:
        for model_id, family in changed.items():
            conn.execute(update(Model).where(col(Model.id) == model_id).values(family=family))
            conn.execute(update(Version).where(col(Version.model_id) == model_id).values(family=family))
