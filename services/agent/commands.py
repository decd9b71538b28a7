"""The run commands both protocols issue (AgentService and A2A): create, cancel, review.

One place decides admission, idempotency and the allowed transitions, so a run created over
A2A and one created with CreateRun are the same thing, refused for the same reasons with the
same AIP-193 errors.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping

from interceptors.identity import current_caller
from interceptors.tracing import capture_trace
from rpcstatus.errors import (
    ApiError,
    aborted,
    failed_precondition,
    invalid_argument,
    not_found,
    resource_exhausted,
    unavailable,
)
from services.agent.cancellations import Cancellations
from services.agent.config import AgentSettings
from services.agent.executor import ExecutorClosed, ExecutorFull, RunExecutor
from services.agent.messages import proto_state_name
from services.agent.model import Run
from services.agent.run_queue import UnstartedRuns
from services.agent.run_store import ConcurrentUpdate, RequestIdReused, RunNotFound, RunStore
from services.agent.state_machine import IllegalTransition, RunState


@contextlib.contextmanager
def domain_errors() -> Iterator[None]:
    """Domain refusals as AIP-193 errors."""
    try:
        yield
    except RunNotFound as error:
        raise not_found("run", error.run_id) from None
    except IllegalTransition as error:
        src, dst = proto_state_name(error.from_state), proto_state_name(error.to_state)
        raise failed_precondition(
            f"the run is {src}; there is no transition {src} -> {dst}", from_state=src, to_state=dst
        ) from None
    except ConcurrentUpdate as error:
        raise concurrent_update(error) from None


def concurrent_update(error: ConcurrentUpdate) -> ApiError:
    """A command that kept losing races for one run: nothing was written, so a retry is safe."""
    return aborted(
        f"run {error.run_id!r} kept changing while this request was applied (nothing was changed); retry it",
        retry_after_s=0.05,
        reason="CONCURRENT_UPDATE",
    )


def _background_context() -> contextvars.Context:
    """The context a run executes in: it acts for its creator, but outlives the creating call.

    Carried over: the caller identity (RAG calls forward the creator's token) and the trace
    context (the run's calls join the creating call's trace). Not carried over: the call's
    deadline and anything else scoped to the call, since the run continues after it returns.
    """
    caller, restore_trace = current_caller.get(), capture_trace()
    context = contextvars.Context()
    context.run(current_caller.set, caller)
    context.run(restore_trace)
    return context


class RunCommands:
    """``executor``: this replica's, if it executes runs. ``unstarted``: given when runs are
    executed by whichever replica claims them (role "serve" or "execute"): admission is then
    checked against the shared backlog, and an admitted run is announced instead of submitted."""

    def __init__(
        self,
        *,
        store: RunStore,
        executor: RunExecutor | None,
        settings: AgentSettings,
        cancellations: Cancellations | None = None,
        unstarted: UnstartedRuns | None = None,
    ) -> None:
        assert executor is not None or unstarted is not None, "runs must be executed somewhere"
        self._store = store
        self._executor = executor
        self._settings = settings
        self._cancellations = cancellations or Cancellations(store)
        self._unstarted = unstarted

    async def create(
        self,
        *,
        question: str,
        request_id: str,
        labels: Mapping[str, str],
        retrieval_filter: Mapping[str, str],
        request_id_field: str = "request_id",
        push_config_follows: bool = False,
    ) -> Run:
        """Store a run for the caller and start it, or return the run this request id already made.

        ``push_config_follows``: an A2A push config is stored for it next (``RunStore.create``)."""

        async def store() -> tuple[Run, bool]:
            try:
                return await self._store.create(
                    question=question,
                    creator=current_caller.get().subject,
                    request_id=request_id,
                    labels=labels,
                    retrieval_filter=retrieval_filter,
                    push_config_follows=push_config_follows,
                )
            except RequestIdReused:
                raise invalid_argument(
                    [(request_id_field, "was already used for a different request; use a new one")]
                ) from None

        try:
            if self._unstarted is not None:
                await self._unstarted.check_room()
                run, created = await store()
                if created:
                    self._unstarted.admitted()
            else:
                assert self._executor is not None
                with self._executor.admit() as admission:
                    run, created = await store()
                    if created:
                        self._executor.submit(admission, run.run_id, context=_background_context())
        except ExecutorFull as full:
            raise resource_exhausted(
                f"the agent is {full}; retry later",
                retry_after_s=self._settings.busy_retry_after_s,
                limit="agent_run_slots",
            ) from None
        except ExecutorClosed:
            raise unavailable("the agent is shutting down; retry on another instance", reason="DRAINING") from None
        return run

    # cancel and review raise the domain's RunNotFound / IllegalTransition: each protocol names
    # them its own way (AgentService with ``domain_errors``, A2A with its task errors).

    async def cancel(self, run_id: str, reason: str) -> Run:
        run = await self._store.transition(run_id, RunState.CANCELLED, cause=reason or "cancelled by caller")
        # Interrupts the workflow if it is executing here; it then compensates what it had done.
        # Executing on another replica, that replica's executor is told (services/agent/cancellations.py).
        if self._executor is None or not self._executor.cancel(run.run_id):
            self._cancellations.cancelled()
        return run

    async def review(self, run_id: str, *, approve: bool, comment: str, reference: str = "") -> Run:
        """Approve (COMPLETED) or reject (FAILED) a run waiting for review; the caller's scope is checked by auth.

        ``reference`` is recorded in the transition's cause (the event log), in the same transaction:
        how a retried reply recognises that it was already applied.
        """
        return await self._store.transition(
            run_id,
            RunState.COMPLETED if approve else RunState.FAILED,
            cause=review_cause(current_caller.get().subject, approve=approve, comment=comment) + reference,
            only_from=[RunState.WAITING_FOR_REVIEW],
            status_reason=comment or f"{'approved' if approve else 'rejected'} by reviewer",
        )


def review_cause(subject: str, *, approve: bool, comment: str) -> str:
    return f"{'approved' if approve else 'rejected'} by {subject}" + (f": {comment}" if comment else "")
