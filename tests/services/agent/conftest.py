"""Agent domain fixtures: the real SQLite stores in a temporary directory, wired like the service."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from runtime.events.outbox import Outbox
from runtime.sqlite import Database
from services.agent.budget import ToolBudget
from services.agent.projections import RunProjection
from services.agent.run_store import RunStore
from services.agent.saga import SagaLog
from tests.runtime.events.redis_server import redis_server


@dataclass
class Stores:
    db: Database
    read_db: Database
    outbox: Outbox
    runs: RunStore
    sagas: SagaLog
    budget: ToolBudget
    projection: RunProjection


async def open_stores(data_dir: Path, *, budget_limit: int = 100) -> Stores:
    db = await Database.open(data_dir / "agent.sqlite3")
    read_db = await Database.open(data_dir / "agent-read.sqlite3")
    outbox = Outbox(db)
    stores = Stores(
        db=db,
        read_db=read_db,
        outbox=outbox,
        runs=RunStore(db, outbox),
        sagas=SagaLog(db),
        budget=ToolBudget(db, max_units_per_owner=budget_limit),
        projection=RunProjection(read_db),
    )
    for component in (stores.runs, stores.sagas, stores.budget, stores.projection):
        await component.create_schema()
    return stores


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[Stores]:
    opened = await open_stores(tmp_path)
    yield opened
    await opened.read_db.close()
    await opened.db.close()


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    with redis_server(tmp_path / "redis") as url:
        yield url
