from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import redis as sync_redis

from interceptors.idempotency import IdempotencyStore, MemoryStore
from runtime.idempotency import DatabaseStore, RedisStore
from tests.ports import free_port


def sqlite_store(path: Path) -> DatabaseStore:
    return DatabaseStore.at("", sqlite_path=path, setting="AGENTMESH_TEST_IDEMPOTENCY_DATABASE_URL")


def postgres_store(url: str) -> DatabaseStore:
    return DatabaseStore.at(
        url, sqlite_path=Path("unused"), setting="AGENTMESH_TEST_IDEMPOTENCY_DATABASE_URL", prefix="test:"
    )


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A real, private redis-server on a free loopback port, gone after the test."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install -y redis-server)")
    port = free_port()
    server = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    try:
        with sync_redis.Redis.from_url(url) as client:
            for _ in range(200):
                try:
                    client.ping()
                    break
                except sync_redis.ConnectionError:
                    time.sleep(0.05)
            else:
                pytest.fail("redis-server did not start")
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)


STORES = [
    "memory",
    "sqlite",
    pytest.param("redis", marks=pytest.mark.redis),
    pytest.param("postgres", marks=pytest.mark.postgres),
]


@pytest.fixture(params=STORES)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[IdempotencyStore]:
    """Each store behind the one interface."""
    made: IdempotencyStore
    if request.param == "memory":
        made = MemoryStore()
    elif request.param == "sqlite":
        made = sqlite_store(tmp_path / "keys.sqlite3")
    elif request.param == "postgres":
        made = postgres_store(request.getfixturevalue("postgres_url"))
    else:
        made = RedisStore.from_url(request.getfixturevalue("redis_url"))
    try:
        yield made
    finally:
        await made.close()


@pytest.fixture(params=STORES)
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], IdempotencyStore]:
    """Makes stores on one backend: a second store sees what the first recorded (but memory)."""
    if request.param == "memory":
        shared = MemoryStore()
        return lambda: shared
    if request.param == "sqlite":
        return lambda: sqlite_store(tmp_path / "keys.sqlite3")
    if request.param == "postgres":
        database = request.getfixturevalue("postgres_url")
        return lambda: postgres_store(database)
    url = request.getfixturevalue("redis_url")
    return lambda: RedisStore.from_url(url)
