"""Both clients count failed gRPC calls as errors, though h2load sees them as HTTP 200."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import h2load, pyclient
from bench.backend import BackendSpec
from bench.payload import UNARY, Call
from bench.processes import ProcessGroup
from bench.topology import start_backend

# A method of the service the bench backend does not serve: every call ends UNIMPLEMENTED,
# as an HTTP 200 response with only trailers.
UNSERVED = Call("unary", "/agentmesh.agent.v1.AgentService/GetRun", UNARY.request, UNARY.responses)


@pytest.fixture
def backend_address(tmp_path: Path) -> Iterator[str]:
    group = ProcessGroup(tmp_path)
    try:
        yield start_backend(group, BackendSpec()).address
    finally:
        group.stop()


@pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load (Debian nghttp2-client) is not installed")
def test_h2load_counts_calls_without_response_data_as_errors(backend_address: str, tmp_path: Path) -> None:
    options = h2load.H2loadOptions(
        url=f"http://{backend_address}", call=UNSERVED, concurrency=4, warmup_s=0.2, duration_s=0.3
    )

    result = h2load.run(options, tmp_path, on_measuring=lambda: None)

    assert result["calls"] > 0
    assert result["errors"] == {"NO_RESPONSE_DATA": result["calls"]}


def test_pyclient_counts_statuses_and_wrong_responses_as_errors(backend_address: str) -> None:
    unserved = pyclient.ClientOptions(
        target=backend_address, call=UNSERVED, concurrency=2, warmup_s=0.1, duration_s=0.3
    )
    wrong = pyclient.ClientOptions(
        target=backend_address,
        call=Call("unary", UNARY.method, UNARY.request, (b"not what the server sends",)),
        concurrency=2,
        warmup_s=0.1,
        duration_s=0.3,
    )

    unserved_result = asyncio.run(pyclient.run(unserved))
    wrong_result = asyncio.run(pyclient.run(wrong))

    assert unserved_result["errors"] == {"UNIMPLEMENTED": unserved_result["calls"]} != {"UNIMPLEMENTED": 0}
    assert wrong_result["errors"] == {pyclient.WRONG_RESPONSE: wrong_result["calls"]} != {pyclient.WRONG_RESPONSE: 0}
