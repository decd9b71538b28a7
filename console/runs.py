"""Runs, read the way any client reads them: generated stubs, through the gateway, with a token.

The console holds a token with ``runs.read`` only (``make run`` mints ``var/keys/console-token``),
so it can list, get and watch runs and nothing else; the gateway and the agent verify it
like any caller's. ``WatchRun`` streams a run's events from a cursor, which the page shows live.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from agentmesh.agent.v1 import agent_service_pb2, agent_service_pb2_grpc, run_pb2
from services.agent.state_machine import TRANSITIONS

STATE_PREFIX = "STATE_"


def state_name(value: int) -> str:
    return run_pb2.Run.State.Name(value).removeprefix(STATE_PREFIX)  # type: ignore[arg-type]


def run_json(run: run_pb2.Run) -> dict[str, Any]:
    data = _to_dict(run)
    data["state"] = state_name(run.state)
    return data


def event_json(event: run_pb2.RunEvent) -> dict[str, Any]:
    data = _to_dict(event)
    data["sequence"] = event.sequence
    data["from_state"] = state_name(event.from_state) if event.from_state else ""
    data["to_state"] = state_name(event.to_state) if event.to_state else ""
    return data


def _to_dict(message: Message) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True)


def state_machine() -> dict[str, list[str]]:
    """The agent's transition table, for drawing the path a run took through it."""
    return {str(state): sorted(str(t) for t in targets) for state, targets in TRANSITIONS.items()}


class RunsClient:
    """One channel to the gateway (or the edge, with TLS) for the console's lifetime."""

    def __init__(self, target: str, *, token_file: Path | None = None, ca_file: Path | None = None,
                 server_name: str | None = None, timeout_s: float = 5.0) -> None:  # fmt: skip
        options: list[tuple[str, Any]] = []
        if ca_file is not None:
            if server_name:
                options.append(("grpc.ssl_target_name_override", server_name))
            credentials = grpc.ssl_channel_credentials(root_certificates=ca_file.read_bytes())
            self._channel = grpc.aio.secure_channel(target, credentials, options=options)
        else:
            self._channel = grpc.aio.insecure_channel(target, options=options)
        self._stub = agent_service_pb2_grpc.AgentServiceStub(self._channel)
        self._token_file = token_file
        self._timeout_s = timeout_s

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        if self._token_file is None:
            return ()
        # Read per call: `make run` re-mints the token on every start; a long-lived console picks it up.
        return (("authorization", f"Bearer {self._token_file.read_text().strip()}"),)

    async def list_runs(self, *, page_size: int = 50, state: str = "") -> list[dict[str, Any]]:
        request = agent_service_pb2.ListRunsRequest(page_size=page_size)
        if state:
            request.state = run_pb2.Run.State.Value(STATE_PREFIX + state)
        response = await self._stub.ListRuns(request, timeout=self._timeout_s, metadata=self._metadata())
        return [run_json(run) for run in response.runs]

    async def get_run(self, run_id: str) -> dict[str, Any]:
        response = await self._stub.GetRun(
            agent_service_pb2.GetRunRequest(run_id=run_id), timeout=self._timeout_s, metadata=self._metadata()
        )
        return run_json(response.run)

    async def watch(self, run_id: str, *, after_sequence: int = 0) -> AsyncIterator[dict[str, Any]]:
        """The run's events from ``after_sequence`` on (all of them from 0), live until it ends."""
        call = self._stub.WatchRun(
            agent_service_pb2.WatchRunRequest(run_id=run_id, after_sequence=after_sequence),
            metadata=self._metadata(),
        )
        try:
            async for response in call:
                yield event_json(response.event)
        finally:
            call.cancel()

    async def aclose(self) -> None:
        await self._channel.close(None)
