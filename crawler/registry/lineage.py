"""The queries behind families through chains of Hugging Face repos (``crawler.hf.resolve_lineage``)."""

from sqlalchemy.engine import Engine

from crawler.registry.sql import execute


def hf_families(engine: Engine) -> tuple[dict[str, tuple[str | None, str | None]], dict[str, str | None]]:
    """({hf model id: (declared base repo, family)}, {family: parent family})."""
    with engine.connect() as conn:
        rows = execute(conn, "SELECT id, base_model, family FROM model WHERE source = 'hf'").all()
        parents: dict[str, str | None] = dict(execute(conn, "SELECT id, parent FROM family").all())
    return {r.id: (r.base_model, r.family) for r in rows}, parents


def set_families(engine: Engine, changed: dict[str, str]) -> None:
    """Model id -> its new family, for the model and all its versions."""
    if not changed:
        return
    with engine.begin() as conn:
        for model_id, family in changed.items():
            execute(conn, "UPDATE model SET family = %(family)s WHERE id = %(id)s", family=family, id=model_id)
            execute(conn, "UPDATE version SET family = %(family)s WHERE model_id = %(id)s", family=family, id=model_id)
