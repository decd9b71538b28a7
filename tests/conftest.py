"""Fixtures shared by the whole suite: the real system, started on free loopback ports."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from tests.system import MODEL_CACHE, MODEL_CACHE_VARIABLES, System, running_system

# PostgreSQL fixtures (postgres_cluster, postgres_url, own_postgres, unstarted_postgres, database_url).
pytest_plugins = ["tests.postgres"]


def pytest_configure(config: pytest.Config) -> None:
    # Every agent and RAG server the tests start keeps the sentence model's graph in MODEL_CACHE,
    # exported there once (about 8 s of CPU) instead of once per test's fresh data dir. In the
    # environment, so servers built in this process and those started as subprocesses (which
    # inherit it) read it alike. A value already set wins.
    for variable in MODEL_CACHE_VARIABLES:
        os.environ.setdefault(variable, str(MODEL_CACHE))


@pytest.fixture
async def system(tmp_path: Path) -> AsyncIterator[System]:
    async with running_system(tmp_path) as started:
        yield started


@pytest.fixture
async def gateway_channel(system: System) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(system.gateway_address) as channel:
        yield channel
