"""Background execution of runs: a fixed number of workers and a bounded backlog.

``CreateRun`` asks for admission first; when the workers and the backlog are all taken it is
refused at once (RESOURCE_EXHAUSTED with a retry hint) rather than queuing without bound. An
admitted run is persisted, then handed to a background task that waits for a worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import Awaitable, Callable, Iterator

import structlog

log = structlog.get_logger(__name__)


class ExecutorFull(Exception):
    def __init__(self, capacity: int, *, slots: str = "runs running or queued") -> None:
        self.capacity = capacity
        self.slots = slots
        super().__init__(f"at capacity ({capacity} {slots})")


class ExecutorClosed(Exception):
    pass


class Admission:
    """A reserved slot; given back if no run is submitted with it."""

    def __init__(self, executor: RunExecutor) -> None:
        self._executor = executor
        self.used = False


class RunExecutor:
    def __init__(self, execute: Callable[[str], Awaitable[object]], *, workers: int, backlog: int) -> None:
        self._execute = execute
        self.workers = workers
        self._workers = asyncio.Semaphore(workers)
        self._on_free: list[Callable[[], None]] = []
        self.capacity = workers + backlog
        self._admitted = 0
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._closed = False

    @property
    def admitted(self) -> int:
        return self._admitted

    @property
    def free(self) -> int:
        """Workers with no run to execute (runs waiting for a worker count as taking one)."""
        return max(0, self.workers - len(self._tasks))

    @property
    def executing(self) -> list[str]:
        """The runs this executor holds (executing or waiting for a worker)."""
        return list(self._tasks)

    def on_free(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` whenever a run's execution ends (a worker came free)."""
        self._on_free.append(callback)

    @contextlib.contextmanager
    def admit(self) -> Iterator[Admission]:
        """Reserve a slot for one run; raises ``ExecutorFull`` or ``ExecutorClosed``."""
        if self._closed:
            raise ExecutorClosed("the agent is shutting down")
        if self._admitted >= self.capacity:
            raise ExecutorFull(self.capacity)
        self._admitted += 1
        admission = Admission(self)
        try:
            yield admission
        finally:
            if not admission.used:
                self._admitted -= 1

    def submit(self, admission: Admission, run_id: str, *, context: contextvars.Context | None = None) -> None:
        """Execute ``run_id`` in the background, in ``context`` (default: a copy of the current one)."""
        admission.used = True
        self._start(run_id, context)

    def resume(self, run_id: str) -> None:
        """Execute a run admitted before a restart (recovery), outside the admission limit."""
        if run_id not in self._tasks:
            self._admitted += 1
            self._start(run_id)

    def _start(self, run_id: str, context: contextvars.Context | None = None) -> None:
        self._tasks[run_id] = asyncio.create_task(self._run(run_id), name=f"run:{run_id}", context=context)

    async def _run(self, run_id: str) -> None:
        try:
            async with self._workers:
                await self._execute(run_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            # The run stays PROCESSING with its saga log intact; recovery picks it up on restart.
            log.exception("run execution failed", run_id=run_id)
        finally:
            self._admitted -= 1
            self._tasks.pop(run_id, None)
            for callback in self._on_free:
                callback()

    def cancel(self, run_id: str) -> bool:
        """Interrupt a run's execution (after it was cancelled); False if it is not executing."""
        task = self._tasks.get(run_id)
        if task is None:
            return False
        task.cancel()
        return True

    async def shutdown(self, *, grace_s: float) -> None:
        """Refuse new runs, give running ones ``grace_s`` to finish, interrupt the rest.

        Interrupted runs keep their saga log and are resumed by recovery at the next start.
        """
        self._closed = True
        tasks = list(self._tasks.values())
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=grace_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if pending:
            log.info("runs interrupted by shutdown; they resume at the next start", count=len(pending))
