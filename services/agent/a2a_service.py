"""`lf.a2a.v1.A2AService` on the run store: a2a-sdk's gRPC servicer over our request handler.

The SDK's ``GrpcHandler`` does the protocol plumbing (A2A errors as statuses with the
`a2a-protocol.org` ErrorInfo, stream framing); ``RunTaskHandler`` answers each method with the
same commands, state machine, event log and saga as AgentService (see docs/a2a.md for the
mapping). Our own AIP-193 errors (bad fields, capacity, draining) pass through unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from typing import Any

import grpc
from a2a.server.context import ServerCallContext
from a2a.server.request_handlers.grpc_handler import GrpcHandler
from a2a.server.request_handlers.request_handler import RequestHandler
from a2a.types import a2a_pb2, a2a_pb2_grpc
from a2a.utils.constants import PROTOCOL_VERSION_CURRENT, VERSION_HEADER
from a2a.utils.errors import (
    TaskNotCancelableError,
    TaskNotFoundError,
    UnsupportedOperationError,
    VersionNotSupportedError,
)
from google.protobuf import empty_pb2

from interceptors.auth import resolve_access
from interceptors.identity import ANONYMOUS, current_caller
from rpcstatus.errors import ApiError, api_errors, api_errors_stream, error_info, invalid_argument, not_found
from runtime.a2a_card import build_agent_card
from runtime.bootstrap import ServiceBinding
from runtime.events.bus import EventBus
from runtime.lifespan import Lifespan
from services.agent.a2a_push import PUSH_GROUP, PushConfigNotFound, PushNotifications
from services.agent.a2a_push_policy import PushUrlRefused, check_push_url
from services.agent.a2a_tasks import (
    CONTEXT_LABEL,
    RUN_STATE,
    SETTLED,
    context_of,
    default_context_id,
    request_id_for,
    stream_events,
    task_of,
)
from services.agent.commands import RunCommands, concurrent_update, review_cause
from services.agent.config import AgentSettings
from services.agent.model import Run, RunEvent
from services.agent.projections import InvalidPageToken, RunProjection
from services.agent.run_store import RUN_EVENTS_STREAM, ConcurrentUpdate, RunNotFound, RunStore
from services.agent.state_machine import TERMINAL, IllegalTransition, RunState
from services.agent.validation import MAX_COMMENT_CHARS, MAX_LABEL_CHARS, MAX_QUESTION_CHARS, RUN_ID

SERVICE_NAME = a2a_pb2.DESCRIPTOR.services_by_name["A2AService"].full_name
SUBMIT_REVIEW = "/agentmesh.agent.v1.AgentService/SubmitReview"
Context = grpc.aio.ServicerContext[Any, Any]
Event = a2a_pb2.Task | a2a_pb2.TaskStatusUpdateEvent | a2a_pb2.TaskArtifactUpdateEvent
# Commits wake waiters at once; this only bounds a missed wake-up (as WatchRun's).
WAIT_POLL_S = 5.0
# A blocking SendMessage answers this long before the caller's deadline with the task as it is
# then, rather than letting the call fail with DEADLINE_EXCEEDED.
DEADLINE_MARGIN_S = 0.25
MAX_LIST_PAGE_SIZE = 100
DEFAULT_LIST_PAGE_SIZE = 50


@contextlib.contextmanager
def _task_errors(task_id: str) -> Iterator[None]:
    try:
        yield
    except RunNotFound:
        raise TaskNotFoundError(f"task {task_id!r} does not exist") from None
    except ConcurrentUpdate as error:
        raise concurrent_update(error) from None


def _check_task_id(task_id: str, field: str = "id") -> None:
    if not task_id:
        raise invalid_argument([(field, "is required")])
    if not RUN_ID.match(task_id):
        raise TaskNotFoundError(f"task {task_id!r} does not exist (task ids are run_ followed by 32 hex digits)")


def _text_of(message: a2a_pb2.Message) -> str:
    return "\n".join(part.text for part in message.parts if part.WhichOneof("content") == "text")


def _review_decision(message: a2a_pb2.Message) -> tuple[bool, str]:
    """(approve, comment) from a reviewer's reply.

    Either a data part {"decision": "approve" | "reject", "comment": ...}, or text starting with
    "approve" or "reject" (the rest is the comment).
    """
    for part in message.parts:
        if part.WhichOneof("content") == "data" and part.data.WhichOneof("kind") == "struct_value":
            fields = part.data.struct_value.fields
            decision = fields["decision"].string_value.lower() if "decision" in fields else ""
            if decision in ("approve", "reject"):
                return decision == "approve", fields["comment"].string_value if "comment" in fields else ""
    word, _, comment = _text_of(message).strip().partition(" ")
    decision = word.lower().rstrip(":,.")
    if decision not in ("approve", "reject"):
        raise invalid_argument(
            [
                (
                    "message.parts",
                    "this task waits for review: the reply's text must start with 'approve' or 'reject'"
                    ' (the rest is the comment), or a data part must be {"decision": "approve"|"reject"}',
                )
            ]
        )
    return decision == "approve", comment.strip()


class RunTaskHandler(RequestHandler):
    """Every A2A method in terms of runs. Tasks are visible to every caller allowed the method, as runs are."""

    def __init__(
        self,
        *,
        store: RunStore,
        commands: RunCommands,
        projection: RunProjection,
        agent_card: Callable[[], a2a_pb2.AgentCard],
        review_scopes: frozenset[str],
        push: PushNotifications,
    ) -> None:
        self._push = push
        self._store = store
        self._commands = commands
        self._projection = projection
        self._agent_card = agent_card
        self._review_scopes = review_scopes

    # -- messages -------------------------------------------------------------------------

    async def on_message_send(self, params: a2a_pb2.SendMessageRequest, context: ServerCallContext) -> a2a_pb2.Task:
        run = await self._accept(params, context)
        history = params.configuration.history_length if params.configuration.HasField("history_length") else None
        if not params.configuration.return_immediately and run.state not in SETTLED:
            run = await self._wait_until_settled(run.run_id, _time_remaining(context))
        return task_of(run, history_length=history)

    async def on_message_send_stream(
        self, params: a2a_pb2.SendMessageRequest, context: ServerCallContext
    ) -> AsyncGenerator[Event]:
        run = await self._accept(params, context)
        async for event in self._follow(run.run_id):
            yield event

    async def _accept(self, params: a2a_pb2.SendMessageRequest, context: ServerCallContext) -> Run:
        """The task this message starts, or the task it replies to (a reviewer's verdict)."""
        _check_version(context)
        message = params.message
        violations: list[tuple[str, str]] = []
        if not message.message_id:
            violations.append(("message.message_id", "is required (a UUID per message; a retry reuses it)"))
        if message.role != a2a_pb2.ROLE_USER:
            violations.append(("message.role", "must be ROLE_USER"))
        if len(message.context_id) > MAX_LABEL_CHARS:
            violations.append(("message.context_id", f"at most {MAX_LABEL_CHARS} characters"))
        if violations:
            raise invalid_argument(violations)
        push = params.configuration.task_push_notification_config
        with_push = params.configuration.HasField("task_push_notification_config")
        if with_push:
            # Checked before anything is created: a refused URL creates no task.
            with _push_url_errors("configuration.task_push_notification_config.url"):
                await check_push_url(push.url, self._push.settings)
        if message.task_id:
            return await self._reply_with(message, push if with_push else None)
        run = await self._create(message, push_config_follows=with_push)
        if with_push:
            push.task_id = run.run_id
            with _push_url_errors("configuration.task_push_notification_config.url"):
                await self._push.save(push, creator=current_caller.get().subject)
        return run

    async def _reply_with(self, message: a2a_pb2.Message, push: a2a_pb2.TaskPushNotificationConfig | None) -> Run:
        """The reply, its push config (if it carries one) stored first: updates committed before a
        config are not pushed to it, and the reply's outcome should be. A refused reply applied
        nothing, so its config is removed again."""
        if push is None:
            return await self._reply(message)
        _check_task_id(message.task_id, "message.task_id")
        push.task_id = message.task_id
        with _push_url_errors("configuration.task_push_notification_config.url"):
            stored = await self._push.save(push, creator=current_caller.get().subject)
        try:
            return await self._reply(message)
        except Exception:
            await self._push.delete(message.task_id, stored.id)
            raise

    async def _create(self, message: a2a_pb2.Message, *, push_config_follows: bool) -> Run:
        question = _text_of(message)
        if not question.strip():
            raise invalid_argument([("message.parts", "needs a text part with the question")])
        if len(question) > MAX_QUESTION_CHARS:
            raise invalid_argument(
                [("message.parts", f"the text is {len(question)} characters; the limit is {MAX_QUESTION_CHARS}")]
            )
        context_id = message.context_id or default_context_id(current_caller.get().subject, message.message_id)
        return await self._commands.create(
            question=question,
            request_id=request_id_for(message.message_id),
            labels={CONTEXT_LABEL: context_id},
            retrieval_filter={},
            request_id_field="message.message_id",
            push_config_follows=push_config_follows,
        )

    async def _reply(self, message: a2a_pb2.Message) -> Run:
        _check_task_id(message.task_id, "message.task_id")
        with _task_errors(message.task_id):
            run = await self._store.get(message.task_id)
        if message.context_id and message.context_id != context_of(run):
            raise invalid_argument([("message.context_id", f"task {run.run_id!r} is in context {context_of(run)!r}")])
        caller = current_caller.get()
        if run.state is RunState.WAITING_FOR_REVIEW:
            missing = self._review_scopes - caller.scopes
            if caller is not ANONYMOUS and missing:
                listed = " ".join(sorted(missing))
                raise ApiError(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"replying to a task that waits for review needs scope(s) {listed!r}, which the token for"
                    f" {caller.subject!r} lacks",
                    [error_info("SCOPE_MISSING", method="lf.a2a.v1.A2AService/SendMessage", missing_scopes=listed)],
                )
        approve, comment = _review_decision(message)
        if len(comment) > MAX_COMMENT_CHARS:
            raise invalid_argument([("message.parts", f"the comment is at most {MAX_COMMENT_CHARS} characters")])
        # The reply's message id goes into the decision's log entry, in the decision's transaction,
        # so a retried reply (on any replica) finds it there instead of being refused as too late.
        reference = f" [A2A message {message.message_id!r} of {caller.subject}]"
        if run.state is RunState.WAITING_FOR_REVIEW:
            with contextlib.suppress(IllegalTransition), _task_errors(run.run_id):  # decided meanwhile: see below
                return await self._commands.review(run.run_id, approve=approve, comment=comment, reference=reference)
        applied = await self._decision_with(run.run_id, reference)
        if applied is None:
            state = (await self._store.get(run.run_id)).state
            if state in TERMINAL:
                raise UnsupportedOperationError(f"task {run.run_id!r} is {state.lower()}; it takes no more messages")
            raise UnsupportedOperationError(f"task {run.run_id!r} is working; it asks for no input now")
        if applied.cause != review_cause(caller.subject, approve=approve, comment=comment) + reference:
            raise invalid_argument(
                [("message.message_id", "was already used for a different reply; use a new message id")]
            )
        return applied.run

    async def _decision_with(self, run_id: str, reference: str) -> RunEvent | None:
        for event in await self._store.events(run_id=run_id):
            if event.cause.endswith(reference):
                return event
        return None

    async def _wait_until_settled(self, run_id: str, budget_s: float | None) -> Run:
        loop = asyncio.get_running_loop()
        until = None if budget_s is None else loop.time() + budget_s
        while True:
            next_commit = self._store.next_commit()  # taken before the read, so no commit is missed
            run = await self._store.get(run_id)
            left = None if until is None else until - loop.time()
            if run.state in SETTLED or (left is not None and left <= 0):
                return run
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(WAIT_POLL_S if left is None else min(left, WAIT_POLL_S)):
                    await next_commit.wait()

    async def _follow(self, run_id: str) -> AsyncIterator[Event]:
        """The task, then its updates from the run's event log, until it is terminal or waits for input.

        Read by sequence from the shared log, so any replica streams any run without gaps: the
        first Task is the run as of the last event read, and updates follow from there.
        """
        events = await self._store.events(run_id=run_id)
        while events and len(events) % 500 == 0:  # a run's log longer than one read
            events += await self._store.events(after=events[-1].sequence, run_id=run_id)
        if not events:
            raise TaskNotFoundError(f"task {run_id!r} does not exist")
        cursor, run = events[-1].sequence, events[-1].run
        yield task_of(run)
        while run.state not in SETTLED:
            next_commit = self._store.next_commit()
            events = await self._store.events(after=cursor, run_id=run_id)
            for event in events:
                cursor, run = event.sequence, event.run
                for update in stream_events(event):
                    yield update
                if run.state in SETTLED:
                    return
            if not events:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(WAIT_POLL_S):
                        await next_commit.wait()

    # -- tasks ----------------------------------------------------------------------------

    async def on_get_task(self, params: a2a_pb2.GetTaskRequest, context: ServerCallContext) -> a2a_pb2.Task:
        _check_task_id(params.id)
        if params.HasField("history_length") and params.history_length < 0:
            raise invalid_argument([("history_length", "must not be negative")])
        with _task_errors(params.id):
            run = await self._store.get_for_caller(params.id)
        return task_of(run, history_length=params.history_length if params.HasField("history_length") else None)

    async def on_list_tasks(
        self, params: a2a_pb2.ListTasksRequest, context: ServerCallContext
    ) -> a2a_pb2.ListTasksResponse:
        violations: list[tuple[str, str]] = []
        if params.HasField("page_size") and not 1 <= params.page_size <= MAX_LIST_PAGE_SIZE:
            violations.append(("page_size", f"must be 1 to {MAX_LIST_PAGE_SIZE}"))
        if params.context_id:
            violations.append(("context_id", "filtering by context is not supported by this agent; leave it empty"))
        if params.HasField("status_timestamp_after"):
            violations.append(("status_timestamp_after", "is not supported by this agent; leave it unset"))
        if params.HasField("history_length") and params.history_length < 0:
            violations.append(("history_length", "must not be negative"))
        if violations:
            raise invalid_argument(violations)
        page_size = params.page_size if params.HasField("page_size") else DEFAULT_LIST_PAGE_SIZE
        state = RUN_STATE.get(params.status) if params.status else None
        if params.status and state is None:
            # A state no run is ever in (REJECTED, AUTH_REQUIRED): an empty, complete listing.
            return a2a_pb2.ListTasksResponse(page_size=page_size)
        projection = self._projection
        try:
            runs, token = await projection.page(state=state, page_size=page_size, page_token=params.page_token)
        except InvalidPageToken as error:
            raise invalid_argument([("page_token", f"{error}; pass next_page_token unchanged")]) from None
        counts = await projection.counts()
        history = params.history_length if params.HasField("history_length") else None
        return a2a_pb2.ListTasksResponse(
            tasks=[task_of(r, history_length=history, include_artifacts=params.include_artifacts) for r in runs],
            next_page_token=token,
            page_size=page_size,
            total_size=counts.get(state, 0) if state else sum(counts.values()),
        )

    async def on_cancel_task(self, params: a2a_pb2.CancelTaskRequest, context: ServerCallContext) -> a2a_pb2.Task:
        _check_task_id(params.id)
        with _task_errors(params.id):
            try:
                run = await self._commands.cancel(params.id, "cancelled by caller")
            except IllegalTransition as refused:
                raise TaskNotCancelableError(
                    f"task {params.id!r} is {refused.from_state.lower()} and can no longer be canceled"
                ) from None
        return task_of(run)

    async def on_subscribe_to_task(
        self, params: a2a_pb2.SubscribeToTaskRequest, context: ServerCallContext
    ) -> AsyncGenerator[Event]:
        _check_task_id(params.id)
        with _task_errors(params.id):
            run = await self._store.get(params.id)
        if run.state in TERMINAL:
            raise UnsupportedOperationError(f"task {params.id!r} is {run.state.lower()}; there is nothing to follow")
        async for event in self._follow(params.id):
            yield event

    async def on_get_extended_agent_card(
        self, params: a2a_pb2.GetExtendedAgentCardRequest, context: ServerCallContext
    ) -> a2a_pb2.AgentCard:
        return self._agent_card()

    # -- push notifications ---------------------------------------------------------------

    async def on_create_task_push_notification_config(
        self, params: a2a_pb2.TaskPushNotificationConfig, context: ServerCallContext
    ) -> a2a_pb2.TaskPushNotificationConfig:
        _check_task_id(params.task_id, "task_id")
        with _task_errors(params.task_id):
            await self._store.get(params.task_id)
        with _push_url_errors("url"):
            return _redacted(await self._push.save(params, creator=current_caller.get().subject))

    async def on_get_task_push_notification_config(
        self, params: a2a_pb2.GetTaskPushNotificationConfigRequest, context: ServerCallContext
    ) -> a2a_pb2.TaskPushNotificationConfig:
        _check_task_id(params.task_id, "task_id")
        try:
            return _redacted(await self._push.get(params.task_id, params.id))
        except PushConfigNotFound:
            raise not_found("push notification config", params.id) from None

    async def on_list_task_push_notification_configs(
        self, params: a2a_pb2.ListTaskPushNotificationConfigsRequest, context: ServerCallContext
    ) -> a2a_pb2.ListTaskPushNotificationConfigsResponse:
        _check_task_id(params.task_id, "task_id")
        if not 0 <= params.page_size <= MAX_LIST_PAGE_SIZE:
            raise invalid_argument(
                [("page_size", f"must be 0 (the default, {DEFAULT_LIST_PAGE_SIZE}) to {MAX_LIST_PAGE_SIZE}")]
            )
        configs, token = await self._push.page(
            params.task_id, page_size=params.page_size or DEFAULT_LIST_PAGE_SIZE, after=params.page_token
        )
        return a2a_pb2.ListTaskPushNotificationConfigsResponse(
            configs=[_redacted(c) for c in configs], next_page_token=token
        )

    async def on_delete_task_push_notification_config(
        self, params: a2a_pb2.DeleteTaskPushNotificationConfigRequest, context: ServerCallContext
    ) -> None:
        _check_task_id(params.task_id, "task_id")
        await self._push.delete(params.task_id, params.id)


def _redacted(config: a2a_pb2.TaskPushNotificationConfig) -> a2a_pb2.TaskPushNotificationConfig:
    """A config as read back: the credentials the agent sends are never returned."""
    shown = a2a_pb2.TaskPushNotificationConfig()
    shown.CopyFrom(config)
    shown.authentication.ClearField("credentials")
    if not config.HasField("authentication"):
        shown.ClearField("authentication")
    return shown


@contextlib.contextmanager
def _push_url_errors(field: str) -> Iterator[None]:
    try:
        yield
    except PushUrlRefused as refused:
        raise invalid_argument([(field, str(refused))]) from None


def _grpc_context(context: ServerCallContext) -> grpc.aio.ServicerContext[Any, Any] | None:
    found: grpc.aio.ServicerContext[Any, Any] | None = context.state.get("grpc_context")
    return found


def _time_remaining(context: ServerCallContext) -> float | None:
    grpc_context = _grpc_context(context)
    remaining = grpc_context.time_remaining() if grpc_context is not None else None
    return None if remaining is None else max(0.0, remaining - DEADLINE_MARGIN_S)


def _check_version(context: ServerCallContext) -> None:
    """A2A-Version (metadata): absent means the current version; another major one is refused."""
    grpc_context = _grpc_context(context)
    for key, value in (grpc_context.invocation_metadata() or ()) if grpc_context is not None else ():
        if key == VERSION_HEADER.lower():
            version = value if isinstance(value, str) else value.decode()
            if version.split(".")[0] != PROTOCOL_VERSION_CURRENT.split(".")[0]:
                raise VersionNotSupportedError(
                    f"A2A-Version {version} is not supported; this agent speaks {PROTOCOL_VERSION_CURRENT}"
                )


class A2AServicer(GrpcHandler):
    """The SDK's servicer; our AIP-193 errors (raised inside the handler) become the call's status too."""

    @api_errors
    async def SendMessage(self, request: a2a_pb2.SendMessageRequest, context: Context) -> a2a_pb2.SendMessageResponse:
        return await super().SendMessage(request, context)

    @api_errors
    async def GetTask(self, request: a2a_pb2.GetTaskRequest, context: Context) -> a2a_pb2.Task:
        return await super().GetTask(request, context)

    @api_errors
    async def ListTasks(self, request: a2a_pb2.ListTasksRequest, context: Context) -> a2a_pb2.ListTasksResponse:
        return await super().ListTasks(request, context)

    @api_errors
    async def CancelTask(self, request: a2a_pb2.CancelTaskRequest, context: Context) -> a2a_pb2.Task:
        return await super().CancelTask(request, context)

    @api_errors
    async def CreateTaskPushNotificationConfig(
        self, request: a2a_pb2.TaskPushNotificationConfig, context: Context
    ) -> a2a_pb2.TaskPushNotificationConfig:
        return await super().CreateTaskPushNotificationConfig(request, context)

    @api_errors
    async def GetTaskPushNotificationConfig(
        self, request: a2a_pb2.GetTaskPushNotificationConfigRequest, context: Context
    ) -> a2a_pb2.TaskPushNotificationConfig:
        return await super().GetTaskPushNotificationConfig(request, context)

    @api_errors
    async def ListTaskPushNotificationConfigs(
        self, request: a2a_pb2.ListTaskPushNotificationConfigsRequest, context: Context
    ) -> a2a_pb2.ListTaskPushNotificationConfigsResponse:
        return await super().ListTaskPushNotificationConfigs(request, context)

    @api_errors
    async def GetExtendedAgentCard(
        self, request: a2a_pb2.GetExtendedAgentCardRequest, context: Context
    ) -> a2a_pb2.AgentCard:
        return await super().GetExtendedAgentCard(request, context)

    @api_errors
    async def DeleteTaskPushNotificationConfig(
        self, request: a2a_pb2.DeleteTaskPushNotificationConfigRequest, context: Context
    ) -> empty_pb2.Empty:
        return await super().DeleteTaskPushNotificationConfig(request, context)

    @api_errors_stream
    async def SendStreamingMessage(
        self, request: a2a_pb2.SendMessageRequest, context: Context
    ) -> AsyncIterator[a2a_pb2.StreamResponse]:
        async for response in super().SendStreamingMessage(request, context):
            yield response

    @api_errors_stream
    async def SubscribeToTask(
        self, request: a2a_pb2.SubscribeToTaskRequest, context: Context
    ) -> AsyncIterator[a2a_pb2.StreamResponse]:
        async for response in super().SubscribeToTask(request, context):
            yield response


def a2a_binding(
    life: Lifespan,
    *,
    store: RunStore,
    commands: RunCommands,
    projection: RunProjection,
    bus: EventBus,
    instance: str,
    settings: AgentSettings,
) -> ServiceBinding:
    """A2AService mounted beside AgentService, on the same stores and commands, with its push deliveries."""
    # A reply that approves or rejects needs what SubmitReview needs, as the auth policy says.
    review_scopes = (
        resolve_access(settings.auth.policy(), SUBMIT_REVIEW).scopes if settings.auth is not None else frozenset()
    )
    push = PushNotifications(store.db, settings.a2a_push)

    async def start_push(_port: int) -> None:
        # After the databases are reachable (an earlier start hook); deliveries are the run events'
        # consumers, fed by the transactional outbox like the projection.
        await push.create_schema()
        await bus.subscribe(RUN_EVENTS_STREAM, group=PUSH_GROUP, consumer=instance, handler=push.enqueue)
        life.supervise("a2a push delivery", push.deliver)

    life.on_started(start_push)
    handler = RunTaskHandler(
        store=store,
        commands=commands,
        projection=projection,
        agent_card=lambda: build_agent_card(settings.a2a, extended=True),
        review_scopes=review_scopes,
        push=push,
    )
    servicer = A2AServicer(handler)

    def add_to_server(server: grpc.aio.Server) -> None:
        a2a_pb2_grpc.add_A2AServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]  # SDK's generated code

    return ServiceBinding(SERVICE_NAME, add_to_server)
