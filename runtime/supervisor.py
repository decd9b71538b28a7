"""Background loops that are watched: a failure is logged, then the loop restarts with backoff or stops the service.

A bare ``asyncio.create_task(loop())`` dies silently on its first exception (the error surfaces,
at best, as "Task exception was never retrieved" at exit) and the service keeps answering as if
its relay, its follower or its pruner still ran. Every long-lived loop runs here instead: the
body is one step (one connection, one watch, one registration kept), and restarting it, backing
off and saying so in the logs is done here, once.

A failure streak (failures with no healthy stretch between them) is logged loudly once, at its
first failure (level error; a traceback unless the error is an expected outage), then quietly
(one warning line per retry); it ends when the body says it is healthy again (``mark_healthy``:
connected, registered, answered) or when a run has lasted ``healthy_after_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import structlog

from runtime.backoff import Backoff

log = structlog.get_logger(__name__)

OnCrash = Literal["restart", "stop"]
LoopBody = Callable[[], Awaitable[None]]
Describe = Callable[[Exception], Awaitable[Mapping[str, Any]] | Mapping[str, Any]]


def _no_fields(_error: Exception) -> Mapping[str, Any]:
    return {}


@dataclass(frozen=True, slots=True)
class Outage:
    """The errors by which a loop's dependency says it is unreachable (Consul, PostgreSQL, a
    resolver), and how the loop words them: no traceback (it is not a bug), the loop's own event.

    ``describe(error)`` gives the log line's fields, and may act on the failure first (clear a
    "registered" flag, fall back to cached settings); it may be async.
    """

    errors: tuple[type[BaseException], ...]
    event: str | Callable[[Exception], str]
    describe: Describe = _no_fields


class SupervisedLoop:
    """Runs ``body`` until cancelled; see the module docstring for what a crash does.

    ``on_crash="restart"`` runs ``body`` again after a backoff delay (reset once a run has lasted
    ``healthy_after_s``, so a loop that crashes once a day does not wait the maximum, or when the
    body calls ``mark_healthy``); ``outage`` names the errors that are a dependency's outage;
    ``on_crash="stop"`` calls ``stop_service(reason)`` once and ends: for loops without which the
    service must not go on serving. A body that returns normally is done and is not restarted.
    """

    def __init__(
        self,
        name: str,
        body: LoopBody,
        *,
        on_crash: OnCrash = "restart",
        stop_service: Callable[[str], None] | None = None,
        backoff: Backoff | None = None,
        healthy_after_s: float = 60.0,
        outage: Outage | None = None,
    ) -> None:
        self.name = name
        self._body = body
        self._on_crash = on_crash
        self._stop_service = stop_service
        self._backoff = backoff or Backoff(initial=0.5, maximum=30.0)
        self._healthy_after_s = healthy_after_s
        self._outage = outage
        self._task: asyncio.Task[None] | None = None
        self.crashes = 0
        self.streak = 0  # failures since the loop was last healthy

    def mark_healthy(self) -> None:
        """Called by the body when it has what it needs again (connected, registered, answered):
        the next failure is a new streak, logged loudly and retried after the shortest delay."""
        self._backoff.reset()
        if self.streak:
            log.info("background loop recovered", loop=self.name, failures=self.streak)
            self.streak = 0

    def start(self) -> SupervisedLoop:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"supervised:{self.name}")
        return self

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _run(self) -> None:
        while True:
            began = time.monotonic()
            try:
                await self._body()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                self.crashes += 1
                if time.monotonic() - began >= self._healthy_after_s:
                    self._backoff.reset()
                    self.streak = 0
                self.streak += 1
                if self._on_crash == "stop":
                    log.exception("background loop crashed; stopping the service", loop=self.name)
                    if self._stop_service is not None:
                        self._stop_service(f"background loop {self.name!r} crashed: {error!r}")
                    return
                delay = self._backoff.next_delay()
                await self._report(error, delay)
                await asyncio.sleep(delay)
                continue
            log.info("background loop finished", loop=self.name)
            return

    async def _report(self, error: Exception, delay: float) -> None:
        loud = self.streak == 1
        outage = self._outage
        if outage is not None and isinstance(error, outage.errors):
            event = outage.event if isinstance(outage.event, str) else outage.event(error)
            fields = outage.describe(error)
            if inspect.isawaitable(fields):
                fields = await fields
            traceback = False
        else:
            event, fields, traceback = "background loop crashed; restarting", {}, loud
        line = {"loop": self.name, "error": str(error) or type(error).__name__, **fields}
        (log.error if loud else log.warning)(
            event, **line, failures=self.streak, retry_in=round(delay, 2), exc_info=traceback
        )

    async def stop(self, *, grace_s: float = 0.0) -> None:
        """Cancel the loop and wait until it has unwound (idempotent).

        With ``grace_s``, a body already told to finish (by a flag of its own) has that long to
        return by itself before it is cancelled: cancelling some calls mid-way (a blocked
        XREADGROUP) breaks the connection they run on.
        """
        task, self._task = self._task, None
        if task is None:
            return
        if grace_s > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace_s):
                    await asyncio.shield(task)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
