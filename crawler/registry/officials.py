"""What the last Hugging Face crawl found for each official checkpoint mirror."""

from sqlalchemy.engine import Engine

from crawler.registry.schema import OFFICIAL_CHECK, ROUTE_CHECK, OfficialCheck, RouteCheck
from crawler.registry.upsert import upsert


def save_checks(engine: Engine, checks: list[OfficialCheck]) -> None:
    with engine.begin() as conn:
        upsert(conn, OFFICIAL_CHECK, [c.model_dump() for c in checks])


def save_route_checks(engine: Engine, checks: list[RouteCheck]) -> None:
    with engine.begin() as conn:
        upsert(conn, ROUTE_CHECK, [c.model_dump() for c in checks])
