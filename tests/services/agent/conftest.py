"""Agent domain fixtures: the real stores, wired like the service, on SQLite files and on PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from runtime.database import Database, open_database, wait_until_reachable
from runtime.embedding import shared_minilm
from runtime.events.outbox import Outbox
from runtime.security import AuthSettings
from services.agent.budget import ToolBudget
from services.agent.decision.extractive import MODEL_NICENESS
from services.agent.projections import RunProjection
from services.agent.run_store import RunStore
from services.agent.saga_log import SagaLog
from tests.runtime.events.redis_server import redis_server
from tools.dev_tokens import generate_private_key, mint, public_jwk


@dataclass
class Stores:
    db: Database
    read_db: Database
    outbox: Outbox
    runs: RunStore
    sagas: SagaLog
    budget: ToolBudget
    projection: RunProjection
    # Tells other replicas' watchers of this one's commits, as the service's supervised loop does.
    announcing: asyncio.Task[None] | None = None


async def open_stores(data_dir: Path, *, database_url: str = "", budget_limit: int = 100) -> Stores:
    """The agent's stores: SQLite files in ``data_dir`` (write and read model), or one PostgreSQL database."""
    db = await open_database(database_url, sqlite_path=data_dir / "agent.sqlite3", setting="DATABASE_URL")
    if database_url:
        read_db = db
        await wait_until_reachable(db)
    else:
        read_db = await open_database("", sqlite_path=data_dir / "agent-read.sqlite3", setting="READ_DATABASE_URL")
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
    stores.announcing = asyncio.create_task(stores.runs.announce_commits())
    return stores


async def close_stores(stores: Stores) -> None:
    if stores.announcing is not None:
        stores.announcing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stores.announcing
    if stores.read_db is not stores.db:
        await stores.read_db.close()
    await stores.db.close()


@pytest.fixture(scope="session", autouse=True)
def sentence_model() -> None:
    """Load the default engine's model once per test process, as the agent server does before it serves.

    Otherwise the first decision of a run would spend its decision timeout loading the model.
    """
    with contextlib.suppress(ImportError):  # without the dense extra the engine scores lexically
        shared_minilm(niceness=MODEL_NICENESS)


@pytest.fixture
async def stores(tmp_path: Path, database_url: str) -> AsyncIterator[Stores]:
    """Each test using it runs on both backends."""
    opened = await open_stores(tmp_path, database_url=database_url)
    yield opened
    await close_stores(opened)


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    with redis_server(tmp_path / "redis") as url:
        yield url


@pytest.fixture
async def llm() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A stand-in LLM service on a loopback port, speaking both supported protocols."""
    received: list[dict[str, Any]] = []

    async def agentmesh(request: web.Request) -> web.Response:
        body = await request.json()
        received.append(body)
        return web.json_response({"answer": "Five business days [1].", "citations": [1, 7], "confidence": 0.8})

    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        received.append(body)
        content = "Refunds take five business days [1]."
        return web.json_response({"choices": [{"message": {"role": "assistant", "content": content}}]})

    app = web.Application()
    app.router.add_post("/decide", agentmesh)
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}", received
    await runner.cleanup()


Bearer = Callable[..., tuple[tuple[str, str]]]


@pytest.fixture
def token_auth(tmp_path: Path) -> tuple[AuthSettings, Bearer]:
    """Auth settings trusting a test key, and ``bearer(subject, *scopes)`` call metadata signed by it."""
    key = generate_private_key("ES256")
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [public_jwk(key, kid="agent-test")]}))

    def bearer(subject: str, *scopes: str) -> tuple[tuple[str, str]]:
        token = mint(key=key, algorithm="ES256", subject=subject, scopes=scopes, kid="agent-test")
        return (("authorization", f"Bearer {token}"),)

    return AuthSettings(jwks_file=jwks), bearer
