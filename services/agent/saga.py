"""Sagas with a persisted log: forward steps, and on failure their compensations in reverse order.

The log records each step as it starts, completes and is compensated, so a process killed
at any point can be picked up by ``Saga.run`` (resume forward) or ``Saga.compensate`` after
restart:
- a completed step is never run again; its stored result is handed to later steps;
- a step that had started but not completed when the process died is run again, so every
  action (and every compensation) must be idempotent by ``StepContext.key``;
- compensation covers completed steps and steps that were in flight at a crash, newest first.

A step that raises is treated as not applied (its own effect must be atomic), so it is not
compensated; the steps before it are.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from services.agent.saga_log import SagaLog, SagaStatus, SettleListener, StepListener, StepStatus

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class StepContext:
    saga_id: str
    step: str
    # Results of the steps already completed, by step name.
    results: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """Idempotency key of this step of this saga: the same on every retry and after restarts."""
        return f"{self.saga_id}:{self.step}"


Action = Callable[[StepContext], Awaitable[Any]]
Compensation = Callable[[StepContext, Any], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class SagaStep:
    name: str
    action: Action
    # None for steps with nothing to undo (reads, pure computation).
    compensation: Compensation | None = None


@dataclass(frozen=True, slots=True)
class SagaOutcome:
    status: SagaStatus
    results: Mapping[str, Any]
    error: str = ""
    failed_step: str = ""


class SagaFailed(Exception):
    """Raised out of ``Saga.run`` when compensation itself could not finish (retried on restart)."""


class Saga:
    """One saga definition (an ordered list of steps) executed against a ``SagaLog``."""

    def __init__(
        self,
        saga_log: SagaLog,
        steps: Sequence[SagaStep],
        *,
        on_step_done: StepListener | None = None,
        on_step_compensated: StepListener | None = None,
        on_settled: SettleListener | None = None,
    ) -> None:
        names = [step.name for step in steps]
        if len(set(names)) != len(names):
            raise ValueError(f"saga step names must be unique: {names}")
        self._log = saga_log
        self._steps = tuple(steps)
        self._on_step_done = on_step_done
        # Told of each compensation that ran, in the transaction marking the step COMPENSATED: a
        # compensation retried after a crash is marked (and told) once, when it finally completes.
        self._on_step_compensated = on_step_compensated
        # Told when the saga ends, in that transaction: from then on it writes nothing more.
        self._on_settled = on_settled

    async def run(self, saga_id: str) -> SagaOutcome:
        """Run (or resume) the saga; on a step failure compensate and return a COMPENSATED outcome."""
        # A saga this creates has no steps recorded: its first is marked started by the same write.
        status, created = await self._log.begin_first(saga_id, 0, self._steps[0].name)
        if status is SagaStatus.COMPENSATING:
            return await self.compensate(saga_id, reason="resuming an interrupted compensation")
        if status in (SagaStatus.COMPLETED, SagaStatus.COMPENSATED):
            return await self._finished(saga_id)

        recorded = {} if created else await self._log.steps(saga_id)
        to_run = [p for p, step in enumerate(self._steps) if recorded.get(step.name, (None,))[0] is not StepStatus.DONE]
        results: dict[str, Any] = {}
        started = 0 if created else -1  # the step the previous write also marked started
        for position, step in enumerate(self._steps):
            if position not in to_run:
                results[step.name] = recorded[step.name][1]
                continue
            context = StepContext(saga_id, step.name, dict(results))
            if started != position:
                await self._log.mark_started(saga_id, position, step.name)
            try:
                async with self._log.keep_leased(saga_id):
                    result = await step.action(context)
            except Exception as error:
                log.warning("saga step failed; compensating", saga_id=saga_id, step=step.name, error=str(error))
                await self._log.mark_step(saga_id, step.name, StepStatus.FAILED)
                outcome = await self.compensate(saga_id, reason=f"{step.name} failed: {error}")
                return SagaOutcome(outcome.status, outcome.results, outcome.error, failed_step=step.name)
            following = next((p for p in to_run if p > position), None)
            await self._log.mark_step(
                saga_id,
                step.name,
                StepStatus.DONE,
                result=result,
                listener=self._on_step_done,
                # The next step is marked started by the same write (it starts right after); after
                # the last, the saga completes by it.
                start=None if following is None else (following, self._steps[following].name),
                completes=following is None,
                on_settled=self._on_settled if following is None else None,
            )
            started = -1 if following is None else following
            results[step.name] = result
        if not to_run:
            await self._log.set_status(saga_id, SagaStatus.COMPLETED, on_settled=self._on_settled)
        return SagaOutcome(SagaStatus.COMPLETED, results)

    async def compensate(self, saga_id: str, *, reason: str) -> SagaOutcome:
        """Undo completed (and crash-interrupted) steps, newest first. Safe to call again."""
        await self._log.begin(saga_id)
        await self._log.set_status(saga_id, SagaStatus.COMPENSATING, error=reason)
        recorded = await self._log.steps(saga_id)
        results = {name: result for name, (status, result, _) in recorded.items() if status is StepStatus.DONE}
        for step in reversed(self._steps):
            if step.name not in recorded:
                continue
            status, result, _ = recorded[step.name]
            if status not in (StepStatus.DONE, StepStatus.STARTED):
                continue
            if step.compensation is not None:
                try:
                    await step.compensation(StepContext(saga_id, step.name, results), result)
                except Exception as error:
                    # Left COMPENSATING: recovery retries the remaining compensations after restart.
                    log.error("saga compensation failed", saga_id=saga_id, step=step.name, exc_info=True)
                    raise SagaFailed(f"compensating {step.name} failed: {error}") from error
            # Steps with nothing to undo are marked too, but there was no compensation to tell of.
            listener = self._on_step_compensated if step.compensation is not None else None
            await self._log.mark_step(saga_id, step.name, StepStatus.COMPENSATED, listener=listener)
        await self._log.set_status(saga_id, SagaStatus.COMPENSATED, on_settled=self._on_settled)
        outcome = await self._log.outcome(saga_id)
        return SagaOutcome(SagaStatus.COMPENSATED, results, error=outcome[1] if outcome else reason)

    async def _finished(self, saga_id: str) -> SagaOutcome:
        recorded = await self._log.steps(saga_id)
        outcome = await self._log.outcome(saga_id)
        assert outcome is not None
        status, error = outcome
        failed = next((name for name, (s, _, _) in recorded.items() if s is StepStatus.FAILED), "")
        results = {name: result for name, (s, result, _) in recorded.items() if s is StepStatus.DONE}
        return SagaOutcome(status, results, error, failed_step=failed)
