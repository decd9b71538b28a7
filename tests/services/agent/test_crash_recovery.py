"""A process killed with SIGKILL mid-saga: after restart the run is resumed or compensated,
nothing is left half-done and no completed step runs twice."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from services.agent.model import EventType, Run
from services.agent.saga_log import SagaStatus
from services.agent.state_machine import RunState
from tests.services.agent.conftest import Stores, open_stores

REPO = Path(__file__).resolve().parents[3]


async def _worker(data_dir: Path, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.services.agent.saga_worker", str(data_dir), *args,
        cwd=REPO, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def _line(process: asyncio.subprocess.Process) -> str:
    assert process.stdout is not None
    return (await asyncio.wait_for(process.stdout.readline(), timeout=30)).decode().strip()


async def _kill_mid_step(data_dir: Path, step: str) -> str:
    process = await _worker(data_dir, "start", step)
    run_id = (await _line(process)).removeprefix("RUN ")
    assert await _line(process) == f"HANGING in {step}"
    process.send_signal(signal.SIGKILL)
    assert await asyncio.wait_for(process.wait(), timeout=30) == -signal.SIGKILL
    return run_id


@asynccontextmanager
async def _recovered(data_dir: Path, killed_in: str, retrieval: str) -> AsyncIterator[tuple[Stores, Run]]:
    """A worker killed in step ``killed_in``, then one that recovers with retrieval ``up`` or
    ``down``: the stores it left and the run it recovered (its state as the recovery said)."""
    run_id = await _kill_mid_step(data_dir, killed_in)
    process = await _worker(data_dir, "recover", retrieval)
    out, _ = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 0
    stores = await open_stores(data_dir)
    try:
        run = await stores.runs.get(run_id)
        assert f"RECOVERED {run_id} {run.state.name}" in out.decode().split("\n")
        yield stores, run
    finally:
        await stores.read_db.close()
        await stores.db.close()


async def test_a_run_killed_during_the_decision_resumes_without_repeating_completed_steps(tmp_path: Path) -> None:
    async with _recovered(tmp_path, killed_in="decide", retrieval="up") as (stores, run):
        run_id = run.run_id
        assert run.state is RunState.COMPLETED
        assert "5 business days" in run.answer
        # Retrieval completed before the kill: it is not called again after the restart.
        assert len((tmp_path / "retrievals.log").read_text().splitlines()) == 1
        attempts = {name: tries for name, (_, _, tries) in (await stores.sagas.steps(run_id)).items()}
        assert attempts == {"validate": 1, "reserve_budget": 1, "retrieve": 1, "decide": 2, "record": 1}
        assert await stores.budget.statuses("alice") == {f"{run_id}:reserve_budget": "SETTLED"}
        steps = [e.cause.split(":")[0] for e in await stores.runs.events(run_id=run_id)
                 if e.type == EventType.STEP_COMPLETED]  # fmt: skip
        assert steps == ["validate", "reserve_budget", "retrieve", "decide"]


async def test_a_run_killed_during_retrieval_is_compensated_when_the_retry_fails(tmp_path: Path) -> None:
    async with _recovered(tmp_path, killed_in="retrieve", retrieval="down") as (stores, run):
        run_id = run.run_id
        assert run.state is RunState.FAILED
        assert "retrieval failed: UNAVAILABLE" in run.status_reason
        # The budget reserved before the kill is given back, once.
        assert await stores.budget.statuses("alice") == {f"{run_id}:reserve_budget": "RELEASED"}
        assert await stores.sagas.status(run_id) is SagaStatus.COMPENSATED
        assert await stores.sagas.unfinished() == []
