"""The hybrid run workflow as a saga: validate → reserve tool budget → retrieve → decide → review and record.

Validation and review are deterministic rules; the decision is the pluggable engine. If the
engine fails or exceeds its time limit, the fallback answers from rules or escalates the run
to human review, so the run still ends in a defined state. Any other failed step (invalid
input, budget exhausted, retrieval unavailable, the run cancelled meanwhile) compensates the
completed steps in reverse and fails the run with the cause.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from runtime.database import Transaction
from services.agent.budget import ToolBudget
from services.agent.decision import Decision, DecisionEngine, DecisionRequest, Passage, Prepares
from services.agent.model import Citation, Run
from services.agent.rules import FallbackRules, ReviewPolicy, ValidationPolicy
from services.agent.run_store import RunStore
from services.agent.saga import Saga, SagaStep, StepContext
from services.agent.saga_log import Fold, SagaLeased, SagaLog, SagaStatus
from services.agent.state_machine import IllegalTransition, RunState

log = structlog.get_logger(__name__)

Retriever = Callable[[str, Mapping[str, str], int], Awaitable[Sequence[Passage]]]
"""(query, metadata filter, top_k) -> passages, best first. The agent's one tool."""


class RunCancelled(Exception):
    pass


@dataclass(frozen=True, slots=True)
class WorkflowOptions:
    decision_timeout: float = 10.0
    top_k: int = 5
    tool_calls_per_run: int = 2


class RunWorkflow:
    STEPS = ("validate", "reserve_budget", "retrieve", "decide", "record")

    def __init__(
        self,
        *,
        store: RunStore,
        saga_log: SagaLog,
        budget: ToolBudget,
        retriever: Retriever,
        engine: DecisionEngine,
        validation: ValidationPolicy | None = None,
        fallback: FallbackRules | None = None,
        review: ReviewPolicy | None = None,
        options: WorkflowOptions | None = None,
    ) -> None:
        self._store = store
        self._saga_log = saga_log
        self._budget = budget
        self._retriever = retriever
        self._engine = engine
        self._validation = validation or ValidationPolicy()
        self._fallback = fallback or FallbackRules()
        self._review = review or ReviewPolicy()
        self._options = options or WorkflowOptions()
        # The runs ``drive`` is executing in this process, as read when their execution began.
        self._executing: dict[str, Run] = {}
        self._saga = Saga(
            saga_log,
            [
                SagaStep("validate", self._validate),
                SagaStep("reserve_budget", self._reserve_budget, self._release_budget),
                SagaStep("retrieve", self._retrieve),
                SagaStep("decide", self._decide),
                SagaStep("record", self._record),
            ],
            on_step_done=StepEvents(store),
            on_step_compensated=self._step_compensated,
            on_settled=WakeWatchers(store),
        )

    async def execute(self, run_id: str) -> Run:
        """Run (or resume) the workflow of one run to a resting state, and return the run as it rests;
        safe to call again."""
        await self.drive(run_id)
        return await self._store.get(run_id)

    async def drive(self, run_id: str) -> None:
        """Run (or resume) the workflow of one run to a resting state; safe to call again. (What the
        executor's workers call: unlike ``execute`` it does not read the run back at the end.)"""
        run = await self._store.get(run_id)
        if run.state is RunState.IDLE:
            run = await self._store.transition(run_id, RunState.PROCESSING, cause="picked up by a worker")
        if run.state is not RunState.PROCESSING:
            await self._finish_saga(run)
            return
        # The steps take the question, creator and filter from the run as read here (they never
        # change) instead of reading it again before each step. A cancel does not wait for a step
        # to read it: CancelRun interrupts the execution (this replica's executor at once, another
        # replica's through services/agent/cancellations.py), and the record step's transition
        # refuses a run that is no longer PROCESSING.
        self._executing[run_id] = run
        try:
            outcome = await self._saga.run(run_id)
        except SagaLeased as leased:
            log.info("run is being executed by another instance", run_id=run_id, owner=leased.owner)
            return
        except asyncio.CancelledError:
            # Cancelled by CancelRun: undo now. Cancelled by shutdown: leave it for recovery.
            if (await self._store.get(run_id)).state is RunState.CANCELLED:
                await asyncio.shield(self.abort(run_id, reason="run cancelled"))
            raise
        finally:
            self._executing.pop(run_id, None)
        if outcome.status is SagaStatus.COMPENSATED:
            await self._fail_if_running(run_id, outcome.error)

    async def abort(self, run_id: str, *, reason: str) -> None:
        """Compensate whatever the run's saga did (after a cancel, or a crash mid-compensation)."""
        await self._saga.compensate(run_id, reason=reason)

    async def recover(self, *, include_unstarted: bool = True, unstarted_after_s: float = 0.0) -> list[str]:
        """Finish interrupted compensations; return the runs whose execution must be resumed.

        That includes admitted runs whose saga never began: at start-up (``include_unstarted``)
        all of them; in periodic sweeps those idle for ``unstarted_after_s`` (the replica that
        accepted them died before a worker picked them up). Sagas are taken only if this
        instance owns them or their owner's lease expired; ``Saga.run`` claims each one with a
        conditional update, so of two replicas sweeping at once one resumes a run, the other
        finds it leased.
        """
        resume: list[str] = []
        for run_id in await self._saga_log.unfinished():
            run = await self._store.get(run_id)
            if run.state in (RunState.IDLE, RunState.PROCESSING):
                resume.append(run_id)
            else:
                await self._finish_saga(run)
        for run_id in await self._store.run_ids_in([RunState.IDLE, RunState.PROCESSING]):
            if run_id in resume:
                continue
            if include_unstarted:
                resume.append(run_id)
            elif unstarted_after_s and await self._saga_log.status(run_id) is None:
                run = await self._store.get(run_id)
                if time.time() - run.update_time > unstarted_after_s:
                    resume.append(run_id)
        return resume

    async def _finish_saga(self, run: Run) -> None:
        """End the saga of a run that is no longer PROCESSING (after a crash or a cancel)."""
        status = await self._saga_log.status(run.run_id)
        try:
            if status is SagaStatus.RUNNING and run.state in (RunState.COMPLETED, RunState.WAITING_FOR_REVIEW):
                # The answer was recorded before the process died; only the record step's own
                # bookkeeping is left, and it is idempotent.
                await self._saga.run(run.run_id)
            elif status in (SagaStatus.RUNNING, SagaStatus.COMPENSATING):
                await self.abort(run.run_id, reason=f"run is {run.state}")
        except SagaLeased as leased:
            log.info("saga is being finished by another instance", run_id=run.run_id, owner=leased.owner)

    async def _fail_if_running(self, run_id: str, cause: str) -> None:
        # Already cancelled (or finished) by someone else: that state stands.
        with contextlib.suppress(IllegalTransition):
            await self._store.transition(run_id, RunState.FAILED, cause=cause, only_from=[RunState.PROCESSING])

    # -- steps (each idempotent by StepContext.key) -------------------------------------

    async def _running(self, run_id: str) -> Run:
        run = self._executing.get(run_id)
        if run is None:
            # Not begun by ``drive`` here (a saga finished after a crash): read it.
            run = await self._store.get(run_id)
        if run.state is not RunState.PROCESSING:
            raise RunCancelled(f"run is {run.state}")
        return run

    async def _validate(self, ctx: StepContext) -> dict[str, Any]:
        run = await self._running(ctx.saga_id)
        question = self._validation.check(run.question)
        if isinstance(self._engine, Prepares):
            self._engine.prepare(question)  # its part of the decision overlaps the next two steps
        return {"question": question, "summary": "question accepted"}

    async def _reserve_budget(self, ctx: StepContext) -> dict[str, Any]:
        run = await self._running(ctx.saga_id)
        units = self._options.tool_calls_per_run
        await self._budget.reserve(ctx.key, owner=run.creator, units=units)
        return {"reservation": ctx.key, "summary": f"{units} tool calls reserved"}

    async def _release_budget(self, ctx: StepContext, result: Any) -> None:
        # Keyed by the reserving step's key, so this also covers a reservation that was in flight at a crash.
        await self._budget.release(ctx.key)

    async def _retrieve(self, ctx: StepContext) -> dict[str, Any]:
        run = await self._running(ctx.saga_id)
        question = ctx.results["validate"]["question"]
        passages = await self._retriever(question, run.retrieval_filter, self._options.top_k)
        return {"passages": [p.to_dict() for p in passages], "summary": f"{len(passages)} passages retrieved"}

    async def _decide(self, ctx: StepContext) -> dict[str, Any]:
        await self._running(ctx.saga_id)
        question = ctx.results["validate"]["question"]
        passages = tuple(Passage.from_dict(p) for p in ctx.results["retrieve"]["passages"])
        request = DecisionRequest(run_id=ctx.saga_id, question=question, passages=passages)
        try:
            async with asyncio.timeout(self._options.decision_timeout):
                decision = await self._engine.decide(request)
            summary = f"decided by {decision.decided_by} (confidence {decision.confidence:.2f})"
        except Exception as error:
            failure = "timed out" if isinstance(error, TimeoutError) else f"failed: {error}"
            log.warning("decision engine failed; using the fallback", run_id=ctx.saga_id, error=failure)
            decision = self._fallback_decision(question)
            summary = f"decision engine {self._engine.name} {failure}; {decision.decided_by}"
        return {"decision": _decision_to_dict(decision), "summary": summary}

    def _fallback_decision(self, question: str) -> Decision:
        answer = self._fallback.answer(question)
        if answer is not None:
            return Decision(answer=answer, citations=(), confidence=1.0, decided_by="fallback:rules")
        return Decision(answer="", citations=(), confidence=0.0, decided_by="fallback:escalated")

    async def _record(self, ctx: StepContext) -> dict[str, Any]:
        # Held by ``drive``: PROCESSING when it began, and the transition below only moves it from
        # there (a cancel meanwhile makes it an IllegalTransition: the step fails and compensates).
        run = self._executing.get(ctx.saga_id) or await self._store.get(ctx.saga_id)
        if run.state in (RunState.COMPLETED, RunState.WAITING_FOR_REVIEW):
            # Recorded by an earlier attempt that died before the saga log said so.
            await self._budget.settle(StepContext(ctx.saga_id, "reserve_budget").key)
            return {"state": str(run.state), "summary": f"run {run.state}"}
        if run.state is not RunState.PROCESSING:
            raise RunCancelled(f"run is {run.state}")
        decision = _decision_from_dict(ctx.results["decide"]["decision"])
        reason = self._review.reason_to_review(run.question, decision)
        target = RunState.COMPLETED if reason is None else RunState.WAITING_FOR_REVIEW
        await self._store.transition(
            ctx.saga_id,
            target,
            cause=reason or f"answered by {decision.decided_by}",
            answer=decision.answer,
            citations=decision.citations,
            decided_by=decision.decided_by,
            only_from=[RunState.PROCESSING],
        )
        await self._budget.settle(StepContext(ctx.saga_id, "reserve_budget").key)
        return {"state": str(target), "summary": f"run {target}"}

    async def _step_compensated(self, tx: Transaction, saga_id: str, step: str, result: Any) -> None:
        await self._store.append_compensation_event(tx, saga_id, step=step)


class StepEvents:
    """A completed step's event in the run's stream, committed with the saga log's mark of the step
    (on PostgreSQL folded into that one statement)."""

    def __init__(self, store: RunStore) -> None:
        self._store = store

    async def __call__(self, tx: Transaction, saga_id: str, step: str, result: Any) -> None:
        await self._store.append_step_event(tx, saga_id, step=step, cause=_summary(result))

    def fold(self, saga_id: str, step: str, result: Any) -> Fold:
        def ctes(leased: str) -> tuple[str, Mapping[str, Any]]:
            return self._store.step_event_ctes(saga_id, step=step, cause=_summary(result), when=leased)

        return Fold(ctes, on_commit=self._store.committed)


class WakeWatchers:
    """Watchers of a finished run wait for its saga to end: nothing more is appended after it."""

    def __init__(self, store: RunStore) -> None:
        self._store = store

    async def __call__(self, tx: Transaction, saga_id: str) -> None:
        await self._store.wake_watchers(tx)

    def fold(self, saga_id: str) -> Fold:
        return Fold(on_commit=self._store.committed)


def _summary(result: Any) -> str:
    return str(result.get("summary", "done")) if isinstance(result, dict) else "done"


def _decision_to_dict(decision: Decision) -> dict[str, Any]:
    return {
        "answer": decision.answer,
        "citations": [
            {
                "document_id": c.document_id,
                "chunk_id": c.chunk_id,
                "start_offset": c.start_offset,
                "end_offset": c.end_offset,
                "quote": c.quote,
                "score": c.score,
            }
            for c in decision.citations
        ],
        "confidence": decision.confidence,
        "decided_by": decision.decided_by,
        "abstained": decision.abstained,
    }


def _decision_from_dict(raw: Mapping[str, Any]) -> Decision:
    return Decision(
        answer=raw["answer"],
        citations=tuple(Citation.from_dict(c) for c in raw["citations"]),
        confidence=float(raw["confidence"]),
        decided_by=raw["decided_by"],
        abstained=bool(raw.get("abstained", False)),
    )
