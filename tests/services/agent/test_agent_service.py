"""AgentService over gRPC, on the real servers: background runs, back-pressure, review, cancel, WatchRun, load."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2

from agentmesh.agent.v1 import agent_service_pb2 as agent_pb
from agentmesh.agent.v1 import agent_service_pb2_grpc as agent_grpc
from agentmesh.agent.v1 import run_pb2
from agentmesh.rag.v1 import document_pb2
from agentmesh.rag.v1 import rag_service_pb2 as rag_pb
from agentmesh.rag.v1 import rag_service_pb2_grpc as rag_grpc
from rpcstatus.errors import status_details
from runtime.security import AuthSettings
from tests.services.agent.conftest import Bearer
from tests.services.agent.runs import listed_once, settled_run, until_step
from tests.system import start_agent, start_rag, wait_until

Run = run_pb2.Run
Review = agent_pb.SubmitReviewRequest
KNOWLEDGE = [
    document_pb2.Document(
        document_id="refund-policy",
        text="Refunds are processed within 5 business days. A refund needs the order number.",
    ),
    document_pb2.Document(document_id="security", text="Passwords rotate every 90 days. Use the company vault."),
]


@asynccontextmanager
async def agent_service(data_dir: Path, **settings: object) -> AsyncIterator[agent_grpc.AgentServiceAsyncStub]:
    """RAG (with KNOWLEDGE ingested) and an agent configured with ``settings``; yields an agent stub."""
    rag = await start_rag(data_dir / "rag")
    agent = await start_agent(data_dir / "agent", f"127.0.0.1:{rag.port}", **settings)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{rag.port}") as channel:
            await rag_grpc.RagServiceStub(channel).IngestDocuments(
                rag_pb.IngestDocumentsRequest(documents=KNOWLEDGE), timeout=10
            )
        async with grpc.aio.insecure_channel(f"127.0.0.1:{agent.port}") as channel:
            yield agent_grpc.AgentServiceStub(channel)
    finally:
        await agent.stop()
        await rag.stop()


async def _create(agent: agent_grpc.AgentServiceAsyncStub, question: str = "How long do refunds take?") -> run_pb2.Run:
    return (await agent.CreateRun(agent_pb.CreateRunRequest(question=question), timeout=10)).run


async def test_create_run_returns_processing_at_once_and_the_workflow_finishes_in_the_background(
    tmp_path: Path,
) -> None:
    async with agent_service(tmp_path) as agent:
        created = await _create(agent)
        assert created.state == Run.STATE_PROCESSING
        assert created.answer == ""

        run = await settled_run(agent, created.run_id)
        assert run.state == Run.STATE_COMPLETED
        assert run.answer == "Refunds are processed within 5 business days. [1]"
        assert run.citations[0].document_id == "refund-policy"

        async def counted() -> bool:
            stats = await agent.GetRunStats(agent_pb.GetRunStatsRequest())
            return [(c.state, c.count) for c in stats.counts] == [(Run.STATE_COMPLETED, 1)]

        await wait_until(counted)  # the read model follows the log within moments


async def test_a_full_agent_refuses_new_runs_with_resource_exhausted_and_a_retry_delay(tmp_path: Path) -> None:
    engine = "tests.services.agent.engines:BlockingEngine"
    async with agent_service(tmp_path, workers=1, backlog=1, decision_engine=engine) as agent:
        running, queued = await _create(agent), await _create(agent)

        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await _create(agent)
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "at capacity (2 runs running or queued)" in (raised.value.details() or "")
        [retry] = [d for d in status_details(raised.value) if isinstance(d, error_details_pb2.RetryInfo)]
        assert retry.retry_delay.ToMilliseconds() == 1000

        # Nothing was lost: both accepted runs are still there, and cancelling one frees its slot.
        listed = await listed_once(agent, [running.run_id, queued.run_id])
        assert {r.run_id for r in listed.runs} == {running.run_id, queued.run_id}
        await agent.CancelRun(agent_pb.CancelRunRequest(run_id=queued.run_id))

        async def accepted() -> bool:
            try:
                await _create(agent)
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                return False
            return True

        await wait_until(accepted)


async def test_a_parked_run_is_completed_by_approval_and_failed_by_rejection(tmp_path: Path) -> None:
    async with agent_service(tmp_path) as agent:
        approved = await settled_run(agent, (await _create(agent, "How often do passwords rotate?")).run_id)
        rejected = await settled_run(agent, (await _create(agent, "How long until passwords rotate?")).run_id)
        for run in (approved, rejected):
            assert run.state == Run.STATE_WAITING_FOR_REVIEW
            assert run.status_reason == "mentions a sensitive topic (password)"

        done = await agent.SubmitReview(
            Review(run_id=approved.run_id, decision=Review.DECISION_APPROVE, comment="accurate")
        )
        assert (done.run.state, done.run.status_reason) == (Run.STATE_COMPLETED, "accurate")
        assert done.run.answer == approved.answer
        refused = await agent.SubmitReview(Review(run_id=rejected.run_id, decision=Review.DECISION_REJECT))
        assert (refused.run.state, refused.run.status_reason) == (Run.STATE_FAILED, "rejected by reviewer")

        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await agent.SubmitReview(Review(run_id=approved.run_id, decision=Review.DECISION_REJECT))
        assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "no transition STATE_COMPLETED -> STATE_FAILED" in (raised.value.details() or "")


async def test_with_auth_only_callers_with_the_reviewer_scope_may_review(
    tmp_path: Path, token_auth: tuple[AuthSettings, Bearer]
) -> None:
    auth, bearer = token_auth
    author = bearer("alice", "runs.write", "runs.read")
    async with agent_service(tmp_path, auth=auth) as agent:
        created = await agent.CreateRun(
            agent_pb.CreateRunRequest(question="How often do passwords rotate?"), metadata=author, timeout=10
        )
        run = await settled_run(agent, created.run.run_id, metadata=author)
        assert (run.state, run.creator) == (Run.STATE_WAITING_FOR_REVIEW, "alice")

        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await agent.SubmitReview(Review(run_id=run.run_id, decision=Review.DECISION_APPROVE), metadata=author)
        assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED

        reviewed = await agent.SubmitReview(
            Review(run_id=run.run_id, decision=Review.DECISION_APPROVE), metadata=bearer("rita", "runs.review")
        )
        assert reviewed.run.state == Run.STATE_COMPLETED
        events = [r.event async for r in agent.WatchRun(agent_pb.WatchRunRequest(run_id=run.run_id), metadata=author)]
        assert events[-1].cause == "approved by rita"


async def test_cancelling_a_running_run_ends_it_and_a_second_cancel_names_both_states(tmp_path: Path) -> None:
    engine = "tests.services.agent.engines:BlockingEngine"
    async with agent_service(tmp_path, decision_engine=engine) as agent:
        run = await _create(agent)
        await until_step(agent, run.run_id, "retrieve")

        cancelled = await agent.CancelRun(agent_pb.CancelRunRequest(run_id=run.run_id, reason="wrong question"))
        assert (cancelled.run.state, cancelled.run.status_reason) == (Run.STATE_CANCELLED, "wrong question")
        events = [r.event async for r in agent.WatchRun(agent_pb.WatchRunRequest(run_id=run.run_id), timeout=10)]
        transitions = [(e.from_state, e.to_state) for e in events if e.type == "run.state_changed"]
        assert transitions[-1] == (Run.STATE_PROCESSING, Run.STATE_CANCELLED)
        # The watch ended after the compensation that followed the cancel, not at the cancel.
        assert (events[-1].type, events[-1].cause) == ("run.step_compensated", "reserve_budget: compensated")

        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await agent.CancelRun(agent_pb.CancelRunRequest(run_id=run.run_id))
        assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "no transition STATE_CANCELLED -> STATE_CANCELLED" in (raised.value.details() or "")


async def test_a_watch_resumed_after_a_disconnect_gets_every_later_event_exactly_once(tmp_path: Path) -> None:
    slow = {"decision_engine": "tests.services.agent.engines:SlowEngine", "decision_engine_options": {"delay_s": 1}}
    async with agent_service(tmp_path, **slow) as agent:
        run = await _create(agent)
        first_part: list[run_pb2.RunEvent] = []
        stream = agent.WatchRun(agent_pb.WatchRunRequest(run_id=run.run_id), timeout=20)
        async for response in stream:
            first_part.append(response.event)
            if len(first_part) == 3:
                stream.cancel()  # the client goes away mid-run
                break

        resumed = agent.WatchRun(
            agent_pb.WatchRunRequest(run_id=run.run_id, after_sequence=first_part[-1].sequence), timeout=20
        )
        second_part = [response.event async for response in resumed]

        everything = [r.event async for r in agent.WatchRun(agent_pb.WatchRunRequest(run_id=run.run_id), timeout=20)]
        assert first_part + second_part == everything
        assert len({e.event_id for e in everything}) == len(everything)
        assert everything[-1].to_state == Run.STATE_COMPLETED


@pytest.mark.slow
async def test_200_concurrent_runs_are_all_accepted_and_completed_and_none_is_lost(tmp_path: Path) -> None:
    async with agent_service(tmp_path, workers=8, backlog=256) as agent:
        created = await asyncio.gather(
            *(
                agent.CreateRun(
                    agent_pb.CreateRunRequest(question="How long do refunds take?", request_id=str(uuid.uuid4())),
                    timeout=30,
                )
                for _ in range(200)
            )
        )
        run_ids = {response.run.run_id for response in created}
        assert len(run_ids) == 200

        async def all_completed() -> bool:
            stats = await agent.GetRunStats(agent_pb.GetRunStatsRequest())
            return [(c.state, c.count) for c in stats.counts] == [(Run.STATE_COMPLETED, 200)]

        await wait_until(all_completed, timeout_s=50, interval_s=0.2)
        listed: set[str] = set()
        token = ""
        while True:
            page = await agent.ListRuns(agent_pb.ListRunsRequest(page_size=500, page_token=token))
            listed |= {r.run_id for r in page.runs if r.state == Run.STATE_COMPLETED and r.citations}
            token = page.next_page_token
            if not token:
                break
        assert listed == run_ids


async def test_an_llm_behind_an_http_api_plugs_in_by_configuration_alone(
    tmp_path: Path, llm: tuple[str, list[dict[str, Any]]]
) -> None:
    base, received = llm
    engine = {"url": f"{base}/v1/chat/completions", "protocol": "openai-chat", "model": "local"}
    async with agent_service(tmp_path, decision_engine="http", decision_engine_options=engine) as agent:
        run = await settled_run(agent, (await _create(agent)).run_id)

    assert (run.state, run.decided_by) == (Run.STATE_COMPLETED, "http")
    assert run.answer == "Refunds take five business days [1]."
    assert run.citations[0].document_id == "refund-policy"
    assert "Question: How long do refunds take?" in received[0]["messages"][1]["content"]
