"""AgentService handlers: commands write through the run store, queries read the projection.

- CreateRun persists the run (PROCESSING) and returns at once; the workflow continues on a
  background worker. When workers and backlog are full it is RESOURCE_EXHAUSTED with RetryInfo.
- CancelRun and SubmitReview are state transitions checked by the state machine; a refused
  one is FAILED_PRECONDITION naming both states.
- GetRun reads the run's own row (the write model), so a run is found at once on any replica
  after CreateRun returned it. ListRuns and GetRunStats read the run projection as it is: they
  never wait for it to catch up (it follows the log within moments).
- A command that kept losing races for one run (another writer changed it each time) is ABORTED
  with RetryInfo: nothing was written, retrying is safe.
- WatchRun streams the run's own event stream after a version, then follows new commits live. It ends
  once the run is terminal and its saga has settled (a cancelled run is compensated after it
  is CANCELLED, each compensation an event), so its last message is the run's last event.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc
import structlog

from agentmesh.agent.v1 import agent_service_pb2, agent_service_pb2_grpc
from rpcstatus.errors import api_errors, api_errors_stream, invalid_argument
from services.agent.commands import RunCommands, domain_errors
from services.agent.messages import event_to_proto, run_to_proto, state_from_proto, state_to_proto
from services.agent.projections import InvalidPageToken, RunProjection
from services.agent.run_store import RunStore
from services.agent.saga_log import SagaLog
from services.agent.state_machine import TERMINAL
from services.agent.validation import validate_create, validate_list, validate_review, validate_run_id

log = structlog.get_logger(__name__)
Context = grpc.aio.ServicerContext[object, object]
Review = agent_service_pb2.SubmitReviewRequest
# Safety net for WatchRun: commits (appends, saga ends) wake watchers at once; this only bounds a missed wake-up.
WATCH_POLL_S = 5.0


class AgentServicer(agent_service_pb2_grpc.AgentServiceServicer):
    def __init__(
        self,
        *,
        store: RunStore,
        sagas: SagaLog,
        projection: RunProjection,
        commands: RunCommands,
    ) -> None:
        self._store = store
        self._sagas = sagas
        self._projection = projection
        self._commands = commands

    # -- commands ------------------------------------------------------------------------

    @api_errors
    async def CreateRun(
        self, request: agent_service_pb2.CreateRunRequest, context: Context
    ) -> agent_service_pb2.CreateRunResponse:
        validate_create(request)
        run = await self._commands.create(
            question=request.question,
            request_id=request.request_id,
            labels=request.labels,
            retrieval_filter=request.retrieval_filter,
        )
        return agent_service_pb2.CreateRunResponse(run=run_to_proto(run))

    @api_errors
    async def CancelRun(
        self, request: agent_service_pb2.CancelRunRequest, context: Context
    ) -> agent_service_pb2.CancelRunResponse:
        validate_run_id(request.run_id)
        with domain_errors():
            run = await self._commands.cancel(request.run_id, request.reason)
        return agent_service_pb2.CancelRunResponse(run=run_to_proto(run))

    @api_errors
    async def SubmitReview(
        self, request: agent_service_pb2.SubmitReviewRequest, context: Context
    ) -> agent_service_pb2.SubmitReviewResponse:
        validate_review(request)
        # The auth interceptor has already required the reviewer scope (runs.review) for this method.
        with domain_errors():
            run = await self._commands.review(
                request.run_id, approve=request.decision == Review.DECISION_APPROVE, comment=request.comment
            )
        return agent_service_pb2.SubmitReviewResponse(run=run_to_proto(run))

    # -- queries -------------------------------------------------------------------------

    @api_errors
    async def GetRun(
        self, request: agent_service_pb2.GetRunRequest, context: Context
    ) -> agent_service_pb2.GetRunResponse:
        validate_run_id(request.run_id)
        with domain_errors():
            run = await self._store.get_for_caller(request.run_id)
        return agent_service_pb2.GetRunResponse(run=run_to_proto(run))

    @api_errors
    async def ListRuns(
        self, request: agent_service_pb2.ListRunsRequest, context: Context
    ) -> agent_service_pb2.ListRunsResponse:
        page_size = validate_list(request)
        try:
            runs, token = await self._projection.page(
                state=state_from_proto(request.state), page_size=page_size, page_token=request.page_token
            )
        except InvalidPageToken as error:
            raise invalid_argument([("page_token", f"{error}; pass next_page_token unchanged")]) from None
        return agent_service_pb2.ListRunsResponse(runs=[run_to_proto(r) for r in runs], next_page_token=token)

    @api_errors
    async def GetRunStats(
        self, request: agent_service_pb2.GetRunStatsRequest, context: Context
    ) -> agent_service_pb2.GetRunStatsResponse:
        counts = await self._projection.counts()
        return agent_service_pb2.GetRunStatsResponse(
            counts=[
                agent_service_pb2.GetRunStatsResponse.StateCount(state=state_to_proto(state), count=count)
                for state, count in sorted(counts.items(), key=lambda item: state_to_proto(item[0]))
            ]
        )

    @api_errors_stream
    async def WatchRun(
        self, request: agent_service_pb2.WatchRunRequest, context: Context
    ) -> AsyncIterator[agent_service_pb2.WatchRunResponse]:
        validate_run_id(request.run_id)
        if request.after_sequence < 0:
            raise invalid_argument([("after_sequence", "must not be negative")])
        with domain_errors():
            await self._store.get(request.run_id)
        cursor = request.after_sequence
        finished_seen = False
        while True:
            # Taken before reading, so a commit between the read and the wait still wakes us.
            next_commit = self._store.next_commit()
            events = await self._store.events(request.run_id, after=cursor)
            for event in events:
                yield agent_service_pb2.WatchRunResponse(event=event_to_proto(event))
                cursor = event.sequence
            if events:
                continue
            if finished_seen:
                return
            if await self._finished(request.run_id):
                # Everything the run will log committed before this saw it finished (the terminal
                # transition commits with its event, the last compensation before the saga
                # settles), possibly after the log read above: one more read of the log sends it.
                finished_seen = True
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(WATCH_POLL_S):
                    await next_commit.wait()

    async def _finished(self, run_id: str) -> bool:
        """Terminal, and nothing more will be appended to its log: its saga (in the shared database) has settled.

        A saga whose owner died stays unsettled until a survivor's recovery compensates it (after
        the lease expires); until then the watch follows, bounded by the client's deadline.
        """
        if (await self._store.get(run_id)).state not in TERMINAL:
            return False
        return await self._sagas.settled(run_id)
