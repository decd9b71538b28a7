"""One lifespan per service: what ``build()`` opens is closed in reverse order, whatever happens.

As Starlette's lifespan, on an ``AsyncExitStack``: each resource registers its close where it
is opened, so closing needs no hand-written sequence to keep in step with the opening one::

    async def build(settings) -> ServerPlan:
        async with Lifespan.opening() as life:
            db = life.closing(await Database.open(path))
            life.on_close(upstreams.close)
            ...
            return ServerPlan(settings=settings, bindings=[...], lifespan=life)

If ``build()`` fails half-way, ``opening()`` closes exactly what was opened so far and re-raises.
A service's ``build()`` gets its lifespan from ``runtime.assembly.assembling``, which opens the
parts every service shares in it first.
Once the plan is handed to the bootstrap, the server owns the lifespan: it runs the
``on_started`` hooks once it listens (they may open more, registering closes the same way),
the ``on_drain`` hooks when a drain begins, and ``aclose()`` once the server has stopped.
Background loops run supervised (`runtime.supervisor`), their stop registered like any close,
so a loop started after a resource is cancelled before that resource closes.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Protocol, TypeVar

import structlog

from runtime.backoff import Backoff
from runtime.supervisor import LoopBody, OnCrash, SupervisedLoop

log = structlog.get_logger(__name__)


class Closable(Protocol):
    async def close(self) -> None: ...


C = TypeVar("C", bound=Closable)
Hook = Callable[[], Awaitable[None]]
StartHook = Callable[[int], Awaitable[None]]


class Lifespan:
    def __init__(self) -> None:
        self._stack = AsyncExitStack()
        self._started: list[StartHook] = []
        self._drain: list[Hook] = []
        self._stop_service: Callable[[str], None] | None = None
        self.failure: str | None = None  # why a supervised loop stopped the service, if one did
        self.closed = False

    @classmethod
    @contextlib.asynccontextmanager
    async def opening(cls) -> AsyncIterator[Lifespan]:
        """A fresh lifespan for a ``build()``; on an exception inside, everything opened is closed."""
        life = cls()
        try:
            yield life
        except BaseException:
            log.error("build failed; closing what it opened")
            await life.aclose()
            raise

    # -- registering closes -------------------------------------------------------------------

    def on_close(self, close: Hook, *, name: str | None = None) -> None:
        """Run ``close`` at shutdown, before everything registered earlier. A failing close is
        logged and does not keep the others from running."""
        label = name or getattr(close, "__qualname__", repr(close))

        async def guarded() -> None:
            try:
                await close()
            except Exception:
                log.exception("close failed", resource=label)

        self._stack.push_async_callback(guarded)

    def closing(self, resource: C) -> C:
        """Register ``await resource.close()`` and hand the resource back, at the line that opened it."""
        self.on_close(resource.close, name=type(resource).__name__)
        return resource

    # -- around serving ----------------------------------------------------------------------

    def on_started(self, hook: StartHook) -> None:
        """Run ``hook(port)`` once the server listens, in registration order. A failure stops the
        half-started server, closes everything and fails the start (the process exits non-zero)."""
        self._started.append(hook)

    def on_drain(self, hook: Hook, *, first: bool = False) -> None:
        """Run ``hook`` when a drain begins (health is already NOT_SERVING); ``first`` puts it
        before the others (deregistration: peers stop picking this instance before anything else)."""
        if first:
            self._drain.insert(0, hook)
        else:
            self._drain.append(hook)

    def supervise(
        self,
        name: str,
        body: LoopBody,
        *,
        on_crash: OnCrash = "restart",
        backoff: Backoff | None = None,
    ) -> SupervisedLoop:
        """Start ``body`` as a supervised background loop now; it is stopped at shutdown, before
        anything registered earlier closes (so before what it uses)."""
        return self.keep_running(
            SupervisedLoop(name, body, on_crash=on_crash, stop_service=self.request_stop, backoff=backoff)
        )

    def keep_running(self, loop: SupervisedLoop) -> SupervisedLoop:
        """Start a loop its owner built (with its own outage wording) now; as ``supervise``, it is
        stopped at shutdown before anything registered earlier closes."""
        self.on_close(loop.stop, name=f"loop {loop.name}")
        return loop.start()

    def bind_stop(self, stop: Callable[[], object]) -> None:
        """How a supervised loop stops the service (the server binds its drain here)."""

        def stop_service(_reason: str) -> None:
            stop()

        self._stop_service = stop_service

    def request_stop(self, reason: str) -> None:
        if self.failure is None:
            self.failure = reason
        if self._stop_service is not None:
            self._stop_service(reason)
        else:
            log.error("service stop requested with no server bound", reason=reason)

    # -- run by the bootstrap ------------------------------------------------------------------

    async def started(self, port: int) -> None:
        for hook in self._started:
            await hook(port)

    async def drain(self) -> None:
        for hook in self._drain:
            try:
                await hook()
            except Exception:
                # A failing drain step must not keep the process from draining and exiting.
                log.exception("drain hook failed", hook=getattr(hook, "__qualname__", repr(hook)))

    async def aclose(self) -> None:
        """Close everything registered, last opened first (idempotent)."""
        if self.closed:
            return
        self.closed = True
        try:
            await self._stack.aclose()
        except Exception:
            # Only an entered context manager can raise here (closes are guarded); the others
            # have been closed all the same.
            log.exception("closing failed")
