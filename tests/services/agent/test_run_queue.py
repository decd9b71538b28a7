"""The shared queue of unstarted runs (roles "serve" and "execute"), on both backends: admitted runs
are counted until an executor claims them, executors claiming at once take each run once, and a
claim is the saga's lease, so a dead claimer's runs are taken over like any orphaned saga."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from services.agent.executor import ExecutorFull, RunExecutor
from services.agent.run_queue import UnstartedRuns
from services.agent.saga_log import SagaLeased, SagaLog, SagaStatus
from services.agent.state_machine import RunState
from tests.services.agent.conftest import Stores
from tests.system import wait_until


def queue(stores: Stores, owner: str, *, lease_s: float = 30, backlog: int = 100) -> UnstartedRuns:
    return UnstartedRuns(stores.db, SagaLog(stores.db, owner=owner, lease_s=lease_s), backlog=backlog)


# A dead claimer's lease in the takeover test (its expiry is waited for, so the test takes this long).
DEAD_LEASE_S = 2.0


async def _admit(stores: Stores, count: int) -> list[str]:
    return [(await stores.runs.create(question=f"q{n}?"))[0].run_id for n in range(count)]


async def test_admitted_runs_are_unstarted_until_claimed_oldest_first(stores: Stores) -> None:
    admitted = await _admit(stores, 4)
    idle, _ = await stores.runs.create(question="not started yet?", start=False)
    cancelled, _ = await stores.runs.create(question="never mind?")
    await stores.runs.transition(cancelled.run_id, RunState.CANCELLED, cause="caller changed their mind")
    executor = queue(stores, "executor-a")

    assert await executor.count() == 5  # PROCESSING or IDLE with no saga; not the cancelled one
    assert await executor.claim(3) == admitted[:3]
    assert await executor.count() == 2
    assert await executor.claim(10) == [admitted[3], idle.run_id]
    assert await executor.claim(10) == []
    assert await executor.count() == 0


async def test_a_claimed_run_is_the_claimers_saga_and_another_executor_finds_it_leased(stores: Stores) -> None:
    [run_id] = await _admit(stores, 1)
    claimer, other = SagaLog(stores.db, owner="executor-a"), SagaLog(stores.db, owner="executor-b")
    assert await UnstartedRuns(stores.db, claimer, backlog=10).claim(1) == [run_id]

    assert await claimer.begin(run_id) is SagaStatus.RUNNING  # the claimer runs it
    with pytest.raises(SagaLeased):
        await other.begin(run_id)


async def test_of_executors_claiming_at_once_each_run_is_claimed_exactly_once(stores: Stores) -> None:
    admitted = await _admit(stores, 30)
    executors = [queue(stores, f"executor-{n}") for n in range(4)]
    claimed: list[str] = []

    async def claim_until_empty(executor: UnstartedRuns) -> None:
        while batch := await executor.claim(4):
            claimed.extend(batch)
            await asyncio.sleep(0)

    await asyncio.gather(*(claim_until_empty(executor) for executor in executors))
    assert sorted(claimed) == sorted(admitted)


async def test_runs_claimed_by_an_executor_that_died_are_taken_over_when_its_lease_expires(stores: Stores) -> None:
    admitted = await _admit(stores, 2)
    # The lease is long enough that a loaded machine cannot let it run out between the claim and
    # the first look (at 0.05 s it did, and the runs were found orphaned already), and the takeover
    # is waited for rather than slept for.
    assert await queue(stores, "dead", lease_s=DEAD_LEASE_S).claim(2) == admitted
    survivor = SagaLog(stores.db, owner="survivor", lease_s=30)
    assert await survivor.unfinished() == []  # leased, for now

    async def taken_over() -> bool:
        return sorted(await survivor.unfinished()) == sorted(admitted)

    await wait_until(taken_over, timeout_s=DEAD_LEASE_S + 10)
    assert await survivor.begin(admitted[0]) is SagaStatus.RUNNING


async def test_admission_is_refused_once_the_unstarted_backlog_is_full(stores: Stores) -> None:
    # A count an hour fresh: what this replica admits since is added at once; what another
    # replica admitted is seen at the next count (the bound is soft by that much).
    serving = UnstartedRuns(stores.db, SagaLog(stores.db, owner="serve"), backlog=3, count_fresh_s=3600)
    await serving.check_room()
    await _admit(stores, 1)  # admitted by another replica
    for _ in range(2):
        await serving.check_room()
        await _admit(stores, 1)
        serving.admitted()
    await serving.check_room()  # 0 counted + 2 of its own
    await _admit(stores, 1)
    serving.admitted()
    with pytest.raises(ExecutorFull, match=r"at capacity \(3 runs waiting for an executor\)"):
        await serving.check_room()
    with pytest.raises(ExecutorFull):  # a replica counting now sees all 4
        await UnstartedRuns(stores.db, SagaLog(stores.db, owner="serve-2"), backlog=3).check_room()


async def test_an_executor_beginning_a_run_makes_room_at_the_next_count(stores: Stores) -> None:
    serving = UnstartedRuns(stores.db, SagaLog(stores.db, owner="serve"), backlog=2, count_fresh_s=0)
    await _admit(stores, 2)
    with pytest.raises(ExecutorFull):
        await serving.check_room()
    await queue(stores, "executor").claim(1)  # an executor began one: room again
    await serving.check_room()


@contextlib.asynccontextmanager
async def feeding(unstarted: UnstartedRuns, executor: RunExecutor) -> AsyncIterator[None]:
    task = asyncio.create_task(unstarted.feed(executor, poll_s=30))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_an_executor_is_fed_at_once_on_admission_and_only_as_many_runs_as_it_has_workers(
    stores: Stores,
) -> None:
    started: list[str] = []
    release = asyncio.Event()

    async def execute(run_id: str) -> None:
        started.append(run_id)
        await release.wait()

    async def started_at_least(count: int) -> bool:
        return len(started) >= count

    executor = RunExecutor(execute, workers=2, backlog=0)
    unstarted = queue(stores, "executor")
    async with feeding(unstarted, executor):
        admitted = await _admit(stores, 3)
        # The poll is 30 s away: the admission itself wakes the executor (the test admits through
        # the store, so it announces here as RunCommands does).
        unstarted.admitted()
        await wait_until(lambda: started_at_least(2))
        assert started == admitted[:2]
        assert await unstarted.count() == 1  # the third waits for a worker, unclaimed
        release.set()  # a worker comes free: the third is claimed
        await wait_until(lambda: started_at_least(3))
    assert started == admitted
    await executor.shutdown(grace_s=1)
