"""AgentService handlers: validate, run the workflow, persist, read back."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import time
from collections.abc import AsyncIterator

import grpc
import structlog

from agentmesh.agent.v1 import agent_service_pb2, agent_service_pb2_grpc, run_pb2
from agentmesh.rag.v1 import rag_service_pb2, rag_service_pb2_grpc
from interceptors.identity import current_caller
from runtime.errors import api_errors, api_errors_stream, failed_precondition, invalid_argument, not_found
from services.agent.answering import compose_answer
from services.agent.config import AgentSettings
from services.agent.run_store import RequestIdConflictError, RunStore, StaleStateError, Transition, new_run_id
from services.agent.validation import validate_create, validate_list, validate_review, validate_run_id

log = structlog.get_logger(__name__)
Context = grpc.aio.ServicerContext[object, object]
Run = run_pb2.Run
TERMINAL = frozenset({Run.STATE_COMPLETED, Run.STATE_FAILED, Run.STATE_CANCELLED})
WATCH_POLL_S = 5.0


def _state_name(state: int) -> str:
    return Run.State.Name(state)  # type: ignore[arg-type]


def _encode_page_token(before_seq: int, state: int) -> str:
    raw = json.dumps({"b": before_seq, "s": state}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_page_token(token: str, state: int) -> int:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
        before, token_state = int(data["b"]), int(data["s"])
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise invalid_argument([("page_token", "is malformed; pass next_page_token unchanged")]) from None
    if token_state != state:
        raise invalid_argument([("page_token", "was issued for a different state filter")])
    return before


class AgentServicer(agent_service_pb2_grpc.AgentServiceServicer):
    def __init__(self, store: RunStore, rag: rag_service_pb2_grpc.RagServiceAsyncStub, settings: AgentSettings) -> None:
        self._store = store
        self._rag = rag
        self._settings = settings

    async def _load(self, run_id: str) -> Run:
        validate_run_id(run_id)
        run = await self._store.get(run_id)
        if run is None:
            raise not_found("run", run_id)
        return run

    async def _answer(self, run: Run, context: Context) -> tuple[Transition, str]:
        """Retrieve and compose; fills the run's answer. Returns the final transition and path."""
        budget = self._settings.retrieval_timeout_s
        remaining = context.time_remaining()
        if remaining is not None:
            budget = min(budget, remaining)
        try:
            response = await self._rag.Search(
                rag_service_pb2.SearchRequest(
                    query=run.question,
                    top_k=self._settings.retrieval_top_k,
                    metadata_filter=run.retrieval_filter,
                ),
                timeout=budget,
            )
        except grpc.aio.AioRpcError as error:
            log.warning("retrieval failed", run_id=run.run_id, code=error.code().name, details=error.details())
            run.state = Run.STATE_FAILED
            run.status_reason = f"knowledge retrieval failed: {error.code().name}"
            return Transition("run.state_changed", Run.STATE_PROCESSING, Run.STATE_FAILED, run.status_reason), ""
        answer, citations = compose_answer(run.question, response.results)
        run.answer = answer
        run.citations.extend(citations)
        run.state = Run.STATE_COMPLETED
        run.decided_by = "extractive"
        return Transition("run.state_changed", Run.STATE_PROCESSING, Run.STATE_COMPLETED, "answer composed"), "ok"

    @api_errors
    async def CreateRun(
        self, request: agent_service_pb2.CreateRunRequest, context: Context
    ) -> agent_service_pb2.CreateRunResponse:
        validate_create(request)
        run = Run(
            run_id=new_run_id(),
            question=request.question,
            state=Run.STATE_PROCESSING,
            labels=request.labels,
            retrieval_filter=request.retrieval_filter,
            request_id=request.request_id,
            creator=current_caller.get().subject,
        )
        now = time.time_ns()
        run.create_time.FromNanoseconds(now)
        run.update_time.FromNanoseconds(now)
        request_hash = hashlib.sha256(request.SerializeToString(deterministic=True)).hexdigest()
        if request.request_id:
            # A retry of an earlier CreateRun returns that run and does no work again.
            try:
                stored, created = await self._store.create(
                    run,
                    request_hash=request_hash,
                    transitions=[Transition("run.created", Run.STATE_IDLE, Run.STATE_PROCESSING, "run accepted")],
                )
            except RequestIdConflictError:
                raise invalid_argument(
                    [("request_id", "was already used for a different request; use a new request_id")]
                ) from None
            if not created:
                return agent_service_pb2.CreateRunResponse(run=stored)
        else:
            await self._store.create(
                run,
                request_hash=request_hash,
                transitions=[Transition("run.created", Run.STATE_IDLE, Run.STATE_PROCESSING, "run accepted")],
            )
        final, _ = await self._answer(run, context)
        run.update_time.FromNanoseconds(time.time_ns())
        try:
            await self._store.save(run, expected_state=Run.STATE_PROCESSING, transitions=[final])
        except StaleStateError as stale:
            # Cancelled while we worked: the cancellation wins, the answer is dropped.
            current = await self._store.get(run.run_id)
            log.info("run changed while processing", run_id=run.run_id, state=_state_name(stale.actual))
            return agent_service_pb2.CreateRunResponse(run=current)
        return agent_service_pb2.CreateRunResponse(run=run)

    @api_errors
    async def GetRun(
        self, request: agent_service_pb2.GetRunRequest, context: Context
    ) -> agent_service_pb2.GetRunResponse:
        return agent_service_pb2.GetRunResponse(run=await self._load(request.run_id))

    @api_errors
    async def ListRuns(
        self, request: agent_service_pb2.ListRunsRequest, context: Context
    ) -> agent_service_pb2.ListRunsResponse:
        page_size = validate_list(request)
        before = _decode_page_token(request.page_token, request.state) if request.page_token else None
        runs, next_cursor = await self._store.page(state=request.state, before_seq=before, limit=page_size)
        token = _encode_page_token(next_cursor, request.state) if next_cursor is not None else ""
        return agent_service_pb2.ListRunsResponse(runs=runs, next_page_token=token)

    async def _transition(self, run: Run, to_state: Run.State.ValueType, cause: str) -> Run:
        from_state = run.state
        run.state = to_state
        run.status_reason = cause
        run.update_time.FromNanoseconds(time.time_ns())
        try:
            await self._store.save(
                run,
                expected_state=from_state,
                transitions=[Transition("run.state_changed", from_state, to_state, cause)],
            )
        except StaleStateError as stale:
            raise failed_precondition(
                f"run {run.run_id} moved to {_state_name(stale.actual)} meanwhile; "
                f"cannot go to {_state_name(to_state)}",
                from_state=_state_name(stale.actual),
                to_state=_state_name(to_state),
            ) from None
        return run

    @api_errors
    async def CancelRun(
        self, request: agent_service_pb2.CancelRunRequest, context: Context
    ) -> agent_service_pb2.CancelRunResponse:
        run = await self._load(request.run_id)
        if run.state in TERMINAL:
            raise failed_precondition(
                f"run {run.run_id} is {_state_name(run.state)}; a finished run cannot be cancelled "
                f"(no transition {_state_name(run.state)} -> STATE_CANCELLED)",
                from_state=_state_name(run.state),
                to_state="STATE_CANCELLED",
            )
        cause = request.reason or "cancelled by caller"
        return agent_service_pb2.CancelRunResponse(run=await self._transition(run, Run.STATE_CANCELLED, cause))

    @api_errors
    async def SubmitReview(
        self, request: agent_service_pb2.SubmitReviewRequest, context: Context
    ) -> agent_service_pb2.SubmitReviewResponse:
        validate_review(request)
        run = await self._load(request.run_id)
        approve = request.decision == agent_service_pb2.SubmitReviewRequest.DECISION_APPROVE
        target = Run.STATE_COMPLETED if approve else Run.STATE_FAILED
        if run.state != Run.STATE_WAITING_FOR_REVIEW:
            raise failed_precondition(
                f"run {run.run_id} is {_state_name(run.state)}, not STATE_WAITING_FOR_REVIEW; "
                f"no transition {_state_name(run.state)} -> {_state_name(target)} by review",
                from_state=_state_name(run.state),
                to_state=_state_name(target),
            )
        cause = request.comment or ("approved by reviewer" if approve else "rejected by reviewer")
        return agent_service_pb2.SubmitReviewResponse(run=await self._transition(run, target, cause))

    @api_errors_stream
    async def WatchRun(
        self, request: agent_service_pb2.WatchRunRequest, context: Context
    ) -> AsyncIterator[agent_service_pb2.WatchRunResponse]:
        if request.after_sequence < 0:
            raise invalid_argument([("after_sequence", "must not be negative")])
        run = await self._load(request.run_id)
        cursor = request.after_sequence
        while True:
            for event in await self._store.events_after(run.run_id, cursor):
                cursor = event.sequence
                yield agent_service_pb2.WatchRunResponse(event=event)
            run = await self._load(request.run_id)
            if run.state in TERMINAL:
                # Events committed with the terminal state are already read: a final drain.
                for event in await self._store.events_after(run.run_id, cursor):
                    cursor = event.sequence
                    yield agent_service_pb2.WatchRunResponse(event=event)
                return
            await self._store.wait_for_change(WATCH_POLL_S)

    @api_errors
    async def GetRunStats(
        self, request: agent_service_pb2.GetRunStatsRequest, context: Context
    ) -> agent_service_pb2.GetRunStatsResponse:
        counts = await self._store.count_by_state()
        return agent_service_pb2.GetRunStatsResponse(
            counts=[
                agent_service_pb2.GetRunStatsResponse.StateCount(state=state, count=count)  # type: ignore[arg-type]
                for state, count in sorted(counts.items())
            ]
        )
