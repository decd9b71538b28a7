"""Fixtures shared by the whole suite: the real system, started on free loopback ports."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from tests.system import System, running_system

# PostgreSQL fixtures (postgres_cluster, postgres_url, own_postgres, unstarted_postgres, database_url).
pytest_plugins = ["tests.postgres"]


@pytest.fixture
async def system(tmp_path: Path) -> AsyncIterator[System]:
    async with running_system(tmp_path) as started:
        yield started


@pytest.fixture
async def gateway_channel(system: System) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(system.gateway_address) as channel:
        yield channel
