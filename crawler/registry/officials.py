"""What the last Hugging Face crawl found for each official checkpoint mirror."""

from sqlalchemy.engine import Engine

from crawler.registry.schema import OfficialCheck, RouteCheck, table_of
from crawler.registry.upsert import upsert


def save_checks(engine: Engine, checks: list[OfficialCheck]) -> None:
    with engine.begin() as conn:
        upsert(conn, table_of(OfficialCheck), [c.model_dump() for c in checks])


def save_route_checks(engine: Engine, checks: list[RouteCheck]) -> None:
    with engine.begin() as conn:
        upsert(conn, table_of(RouteCheck), [c.model_dump() for c in checks])
