"""Sagas: completed steps are compensated in reverse order; a resumed saga never repeats a completed step."""

from __future__ import annotations

from typing import Any

import pytest

from services.agent.saga import Saga, SagaFailed, SagaStep, StepContext
from services.agent.saga_log import SagaLeased, SagaLog, SagaStatus, StepStatus
from tests.services.agent.conftest import Stores


class Journal:
    """Steps and compensations that record what ran, in order."""

    def __init__(self, *, fail_at: str = "", fail_compensation_of: str = "") -> None:
        self.calls: list[str] = []
        self.fail_at = fail_at
        self.fail_compensation_of = fail_compensation_of

    def step(self, name: str, *, compensated: bool = True) -> SagaStep:
        async def action(ctx: StepContext) -> Any:
            self.calls.append(f"do {name}")
            if name == self.fail_at:
                raise RuntimeError(f"{name} broke")
            return {"step": name, "seen": sorted(ctx.results)}

        async def compensation(ctx: StepContext, result: Any) -> None:
            self.calls.append(f"undo {name}")
            if name == self.fail_compensation_of:
                raise RuntimeError(f"undoing {name} broke")

        return SagaStep(name, action, compensation if compensated else None)

    def saga(self, log: SagaLog, names: str = "reserve retrieve decide record") -> Saga:
        return Saga(log, [self.step(n, compensated=n != "retrieve") for n in names.split()])


async def test_steps_run_in_order_and_see_earlier_results(stores: Stores) -> None:
    journal = Journal()
    outcome = await journal.saga(stores.sagas).run("s-1")
    assert outcome.status is SagaStatus.COMPLETED
    assert journal.calls == ["do reserve", "do retrieve", "do decide", "do record"]
    assert outcome.results["record"]["seen"] == ["decide", "reserve", "retrieve"]


async def test_a_failed_step_compensates_the_completed_ones_in_reverse_order(stores: Stores) -> None:
    journal = Journal(fail_at="record")
    outcome = await journal.saga(stores.sagas).run("s-2")

    assert outcome.status is SagaStatus.COMPENSATED
    assert outcome.failed_step == "record"
    assert "record broke" in outcome.error
    # retrieve has nothing to undo; the failed step itself is not compensated.
    assert journal.calls == ["do reserve", "do retrieve", "do decide", "do record", "undo decide", "undo reserve"]
    steps = await stores.sagas.steps("s-2")
    assert {name: status for name, (status, _, _) in steps.items()} == {
        "reserve": StepStatus.COMPENSATED,
        "retrieve": StepStatus.COMPENSATED,
        "decide": StepStatus.COMPENSATED,
        "record": StepStatus.FAILED,
    }


async def test_a_resumed_saga_skips_completed_steps_and_reruns_the_interrupted_one(stores: Stores) -> None:
    log = stores.sagas
    # A previous process completed "reserve" and died during "retrieve".
    await log.begin("s-3")
    await log.mark_started("s-3", 0, "reserve")
    await log.mark_step("s-3", "reserve", StepStatus.DONE, result={"step": "reserve", "seen": []})
    await log.mark_started("s-3", 1, "retrieve")

    journal = Journal()
    outcome = await journal.saga(log).run("s-3")

    assert outcome.status is SagaStatus.COMPLETED
    assert journal.calls == ["do retrieve", "do decide", "do record"]
    attempts = {name: tries for name, (_, _, tries) in (await log.steps("s-3")).items()}
    assert attempts == {"reserve": 1, "retrieve": 2, "decide": 1, "record": 1}


async def test_compensating_after_a_crash_also_undoes_the_step_that_was_in_flight(stores: Stores) -> None:
    log = stores.sagas
    await log.begin("s-4")
    await log.mark_started("s-4", 0, "reserve")
    await log.mark_step("s-4", "reserve", StepStatus.DONE, result={})
    await log.mark_started("s-4", 1, "retrieve")
    await log.mark_step("s-4", "retrieve", StepStatus.DONE, result={})
    await log.mark_started("s-4", 2, "decide")  # killed here: its effect may or may not exist

    journal = Journal()
    outcome = await journal.saga(log).compensate("s-4", reason="run cancelled")

    assert outcome.status is SagaStatus.COMPENSATED
    assert journal.calls == ["undo decide", "undo reserve"]


async def test_a_finished_saga_runs_nothing_again(stores: Stores) -> None:
    journal = Journal(fail_at="decide")
    first = await journal.saga(stores.sagas).run("s-5")
    calls = list(journal.calls)

    again = await journal.saga(stores.sagas).run("s-5")
    assert journal.calls == calls
    assert (again.status, again.failed_step) == (first.status, first.failed_step) == (SagaStatus.COMPENSATED, "decide")


async def test_a_compensation_that_fails_leaves_the_saga_to_be_retried(stores: Stores) -> None:
    journal = Journal(fail_at="record", fail_compensation_of="reserve")
    with pytest.raises(SagaFailed):
        await journal.saga(stores.sagas).run("s-6")
    assert await stores.sagas.status("s-6") is SagaStatus.COMPENSATING
    assert await stores.sagas.unfinished() == ["s-6"]

    # Next start: compensation resumes; steps already compensated are not undone twice.
    healed = Journal()
    outcome = await healed.saga(stores.sagas).run("s-6")
    assert outcome.status is SagaStatus.COMPENSATED
    assert healed.calls == ["undo reserve"]


async def test_step_names_must_be_unique(stores: Stores) -> None:
    journal = Journal()
    with pytest.raises(ValueError, match="unique"):
        Saga(stores.sagas, [journal.step("a"), journal.step("a")])


async def test_a_saga_leased_by_a_live_owner_is_not_run_by_another(stores: Stores) -> None:
    mine = SagaLog(stores.db, owner="agent-a")
    theirs = SagaLog(stores.db, owner="agent-b")
    await mine.begin("s-7")

    journal = Journal()
    with pytest.raises(SagaLeased, match="agent-a"):
        await journal.saga(theirs).run("s-7")
    assert journal.calls == []
    assert await theirs.unfinished() == []
    # The owner itself, restarted under the same name, takes its saga back at once.
    assert await SagaLog(stores.db, owner="agent-a").unfinished() == ["s-7"]


async def test_an_expired_lease_is_taken_over_and_the_old_owner_stops_at_its_next_step(stores: Stores) -> None:
    # agent-a started the saga and then hung past its lease (modelled by a lease already expired).
    stale = SagaLog(stores.db, owner="agent-a", lease_s=-1)
    await stale.begin("s-8")
    await stale.mark_started("s-8", 0, "reserve")

    successor = SagaLog(stores.db, owner="agent-b")
    assert await successor.unfinished() == ["s-8"]
    journal = Journal()
    outcome = await journal.saga(successor).run("s-8")
    assert outcome.status is SagaStatus.COMPLETED

    # agent-a wakes up: its next write finds the saga is no longer its own.
    with pytest.raises(SagaLeased, match="agent-b"):
        await stale.mark_step("s-8", "reserve", StepStatus.DONE, result={})
