"""A Node client generated from the vendored A2A contract alone calls GetTask through the gateway."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.services.a2a.conftest import READ, Issuer, StartSystem, card_for, sdk_client
from tests.services.a2a.test_a2a_service import ASKER, message, returning_immediately, send
from tests.system import REPO

SCRIPT = Path(__file__).parent / "node" / "get_task.cjs"
NODE_MODULES = REPO / ".tools" / "node-grpc" / "node_modules"


@pytest.fixture(scope="session")
def node() -> str:
    found = shutil.which("node")
    if found is None:
        pytest.fail("the Node test needs node and npm (apt-get install nodejs npm)")
    subprocess.run(["make", "-s", "node-deps"], cwd=REPO, check=True, timeout=300)
    return found


async def get_task(node: str, address: str, task_id: str, token: str = "") -> tuple[int, dict[str, Any]]:
    process = await asyncio.create_subprocess_exec(
        node, str(SCRIPT), address, task_id, token,
        env={**os.environ, "NODE_PATH": str(NODE_MODULES)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), timeout=30)
    assert out, err.decode()
    return process.returncode or 0, json.loads(out)


async def test_a_node_client_from_the_vendored_proto_gets_a_task_through_the_gateway(
    node: str, start_system: StartSystem, issuer: Issuer
) -> None:
    system = await start_system()
    client = sdk_client(card_for(system.gateway_address), streaming=False)
    task = await send(client, returning_immediately(message("How long do refunds take?")), issuer.as_("alice", *ASKER))

    code, fetched = await get_task(node, system.gateway_address, task.id, issuer.token("nora", READ))

    assert code == 0
    assert (fetched["id"], fetched["context_id"]) == (task.id, task.context_id)
    assert fetched["status"]["state"].startswith("TASK_STATE_")
    assert fetched["history"][0]["parts"][0]["text"] == "How long do refunds take?"
    missing_code, missing = await get_task(node, system.gateway_address, "run_" + "0" * 32, issuer.token("nora", READ))
    assert (missing_code, missing["code"]) == (1, 5)  # NOT_FOUND, A2A's TaskNotFoundError
    _, anonymous = await get_task(node, system.gateway_address, task.id)
    assert anonymous["code"] == 16  # UNAUTHENTICATED
