"""The queries behind families through chains of Hugging Face repos (``crawler.hf.resolve_lineage``)."""

from sqlalchemy import select, update
from sqlalchemy.engine import Engine

from crawler.registry.schema import Family, Model, Version


def hf_families(engine: Engine) -> tuple[dict[str, tuple[str | None, str | None]], dict[str, str | None]]:
    """({hf model id: (declared base repo, family)}, {family: parent family})."""
    with engine.connect() as conn:
        rows = conn.execute(select(Model.id, Model.base_model, Model.family).where(Model.source == "hf")).all()
        parents = dict(conn.execute(select(Family.id, Family.parent)).all())
    return {r.id: (r.base_model, r.family) for r in rows}, parents


def set_families(engine: Engine, changed: dict[str, str]) -> None:
    """Model id -> its new family, for the model and all its versions."""
    if not changed:
        return
    with engine.begin() as conn:
        for model_id, family in changed.items():
            conn.execute(update(Model).where(Model.id == model_id).values(family=family))
            conn.execute(update(Version).where(Version.model_id == model_id).values(family=family))
