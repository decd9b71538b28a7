"""Background loops that are watched: a crash is logged, then the loop restarts with backoff or stops the service.

A bare ``asyncio.create_task(loop())`` dies silently on its first exception (the error surfaces,
at best, as "Task exception was never retrieved" at exit) and the service keeps answering as if
its relay, its follower or its pruner still ran. Every long-lived loop of a service runs here instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Literal

import structlog

from runtime.backoff import Backoff

log = structlog.get_logger(__name__)

OnCrash = Literal["restart", "stop"]
LoopBody = Callable[[], Awaitable[None]]


class SupervisedLoop:
    """Runs ``body`` until cancelled; see the module docstring for what a crash does.

    ``on_crash="restart"`` runs ``body`` again after a backoff delay (reset once a run has lasted
    ``healthy_after_s``, so a loop that crashes once a day does not wait the maximum);
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
    ) -> None:
        self.name = name
        self._body = body
        self._on_crash = on_crash
        self._stop_service = stop_service
        self._backoff = backoff or Backoff(initial=0.5, maximum=30.0)
        self._healthy_after_s = healthy_after_s
        self._task: asyncio.Task[None] | None = None
        self.crashes = 0

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
                if self._on_crash == "stop":
                    log.exception("background loop crashed; stopping the service", loop=self.name)
                    if self._stop_service is not None:
                        self._stop_service(f"background loop {self.name!r} crashed: {error!r}")
                    return
                delay = self._backoff.next_delay()
                log.exception(
                    "background loop crashed; restarting",
                    loop=self.name,
                    crashes=self.crashes,
                    restart_in=round(delay, 2),
                )
                await asyncio.sleep(delay)
                continue
            log.info("background loop finished", loop=self.name)
            return

    async def stop(self) -> None:
        """Cancel the loop and wait until it has unwound (idempotent)."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
