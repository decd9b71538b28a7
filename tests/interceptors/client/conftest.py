"""Fixtures for the client-side interceptor tests: an echo server factory."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from tests.interceptors.echo_service import Echo, serving


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[tuple[Echo, int]]]]:
    """``await serve(interceptors=[...])`` -> (echo servicer, port); servers stop at teardown."""
    async with serving() as start:
        yield start
