"""The console's web app: one page (plain HTML/CSS/JS under static/), a JSON API, live updates by SSE.

/                  topology and golden signals     /api/overview        the latest snapshot
/traces            recent traces                   /api/traces[/<id>]   trace list, one trace
/traces/<id>       one trace as a waterfall        /api/runs[/<id>]     runs (through the gateway)
/runs, /runs/<id>  runs, one run's path and events /api/live            snapshots as they are made (SSE)
                                                   /api/runs/<id>/events  WatchRun, live (SSE)
"""

from __future__ import annotations

import hmac
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from console.live import LiveView
from console.runs import RunsClient, state_machine
from console.trace_store import TraceStore

STATIC = Path(__file__).parent / "static"
TOKEN_COOKIE = "agentmesh_console_token"
TRACE_ID_HEX = 32


class TokenGate(BaseHTTPMiddleware):
    """With a token configured, every request carries it (header, ``?token=`` once, then a cookie)."""

    def __init__(self, app: Any, token: str) -> None:
        super().__init__(app)
        self._token = token.encode()

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        header = request.headers.get("authorization", "")
        offered = (
            header.removeprefix("Bearer ").strip()
            or request.query_params.get("token", "")
            or request.cookies.get(TOKEN_COOKIE, "")
        )
        if not hmac.compare_digest(offered.encode(), self._token):
            return JSONResponse({"error": "this console needs its token (AGENTMESH_CONSOLE_TOKEN)"}, status_code=401)
        response = await call_next(request)
        if request.query_params.get("token"):
            response.set_cookie(TOKEN_COOKIE, offered, httponly=True, samesite="strict")
        return response


def _grpc_error(error: grpc.aio.AioRpcError) -> JSONResponse:
    status = 404 if error.code() == grpc.StatusCode.NOT_FOUND else 502
    return JSONResponse(
        {"error": f"{error.code().name}: {error.details()}", "code": error.code().name}, status_code=status
    )


def create_app(
    *,
    live: LiveView,
    traces: TraceStore,
    runs: RunsClient,
    token: str | None = None,
) -> Starlette:
    async def page(_: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"cache-control": "no-cache"})

    async def overview(_: Request) -> Response:
        if not live.snapshot.get("ready"):
            await live.refresh()
        return JSONResponse(live.snapshot)

    async def live_stream(request: Request) -> Response:
        async def events() -> AsyncIterator[dict[str, str]]:
            seen = -1
            while not await request.is_disconnected():
                snapshot = await live.next_snapshot(seen, timeout_s=live.refresh_s * 2)
                if int(snapshot.get("version", 0)) != seen:
                    seen = int(snapshot["version"])
                    yield {"event": "overview", "data": json.dumps(snapshot)}

        return EventSourceResponse(events(), ping=15)

    async def trace_list(request: Request) -> Response:
        limit = min(int(request.query_params.get("limit", "100") or 100), 1000)
        found = traces.recent(
            limit=limit,
            service=request.query_params.get("service", ""),
            errors_only=request.query_params.get("errors") == "1",
        )
        return JSONResponse({"traces": [t.summary() for t in found], "stored": len(traces)})

    async def trace_one(request: Request) -> Response:
        trace_id = request.path_params["trace_id"].strip().lower()
        if len(trace_id) != TRACE_ID_HEX or any(c not in "0123456789abcdef" for c in trace_id):
            return JSONResponse({"error": "a trace id is 32 hex digits (as in the services' log lines)"}, 400)
        trace = traces.get(trace_id)
        if trace is None:
            return JSONResponse(
                {"error": f"trace {trace_id} is not among the {len(traces)} most recent traces kept in memory"}, 404
            )
        return JSONResponse(trace.to_json())

    async def run_list(request: Request) -> Response:
        try:
            found = await runs.list_runs(state=request.query_params.get("state", ""))
        except grpc.aio.AioRpcError as error:
            return _grpc_error(error)
        return JSONResponse({"runs": found, "state_machine": state_machine()})

    async def run_one(request: Request) -> Response:
        try:
            run = await runs.get_run(request.path_params["run_id"])
        except grpc.aio.AioRpcError as error:
            return _grpc_error(error)
        return JSONResponse({"run": run, "state_machine": state_machine()})

    async def run_events(request: Request) -> Response:
        run_id = request.path_params["run_id"]
        after = int(request.query_params.get("after", "0") or 0)

        async def events() -> AsyncIterator[dict[str, str]]:
            try:
                async for event in runs.watch(run_id, after_sequence=after):
                    yield {"event": "run-event", "id": str(event["sequence"]), "data": json.dumps(event)}
                yield {"event": "end", "data": "{}"}
            except grpc.aio.AioRpcError as error:
                yield {"event": "failure", "data": json.dumps({"error": f"{error.code().name}: {error.details()}"})}

        return EventSourceResponse(events(), ping=15)

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    routes = [
        Route("/", page),
        Route("/traces", page),
        Route("/traces/{trace_id}", page),
        Route("/runs", page),
        Route("/runs/{run_id}", page),
        Route("/healthz", healthz),
        Route("/api/overview", overview),
        Route("/api/live", live_stream),
        Route("/api/traces", trace_list),
        Route("/api/traces/{trace_id}", trace_one),
        Route("/api/runs", run_list),
        Route("/api/runs/{run_id}", run_one),
        Route("/api/runs/{run_id}/events", run_events),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    middleware = [] if token is None else [Middleware(TokenGate, token=token)]
    # No lifespan: console/server.py opens and closes what the app uses, around the server.
    return Starlette(routes=routes, middleware=middleware)
