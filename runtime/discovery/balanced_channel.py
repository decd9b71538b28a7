"""One stable ``grpc.aio.Channel`` per target service, balanced by gRPC itself over discovered endpoints.

gRPC Python cannot plug in a custom name resolver, but gRPC core already balances over a static
address list (``ipv4:a:p,b:p``) with its ``round_robin`` policy, watches each backend's
``grpc.health.v1`` stream (client-side health checking); the retry interceptor on the channel
sends a retried call to another backend through the same round robin. So this channel keeps one
such core channel for the current endpoint set and swaps in a new one when discovery reports a
change; calls already running, long streams included, finish on the old channel, which is closed
once its last call is done. Core shares subchannels between channels with the same arguments, so
a swap reuses the connections to backends that stayed.

Stubs are built once on the ``BalancedChannel``; every call picks the current core channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import socket
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

import grpc
import structlog

from runtime.discovery.endpoints import Endpoints, Resolver
from runtime.supervisor import Outage, SupervisedLoop

log = structlog.get_logger(__name__)

ChannelOptions = Sequence[tuple[str, Any]]


def service_config(*, health_service: str | None = "") -> dict[str, Any]:
    """gRPC service config: round robin and client-side health checks.

    No ``retryPolicy``: retrying a call that reached a backend is the retry interceptor's alone
    (interceptors/retry.py honours RetryInfo, the deadline and the breaker); gRPC core keeps only
    its transparent retries of calls that never left the client.
    """
    config: dict[str, Any] = {"loadBalancingConfig": [{"round_robin": {}}]}
    if health_service is not None:
        config["healthCheckConfig"] = {"serviceName": health_service}
    return config


async def _core_target(endpoints: Endpoints) -> str:
    """An ``ipv4:``/``ipv6:`` address-list target; host names are resolved here, once per change."""
    v4: list[str] = []
    v6: list[str] = []
    loop = asyncio.get_running_loop()
    for endpoint in endpoints:
        try:
            ip = ipaddress.ip_address(endpoint.address)
        except ValueError:
            infos = await loop.getaddrinfo(endpoint.address, endpoint.port, type=socket.SOCK_STREAM)
            # IPv4 first: "localhost" often lists ::1 first while servers bind 127.0.0.1.
            infos.sort(key=lambda info: info[0] != socket.AF_INET)
            ip = ipaddress.ip_address(infos[0][4][0])
        (v4 if ip.version == 4 else v6).append(
            f"{ip}:{endpoint.port}" if ip.version == 4 else f"[{ip}]:{endpoint.port}"
        )
    if v4 and v6:
        log.warning("discovery.mixed_address_families", using=v4, ignoring=v6)
    return "ipv4:" + ",".join(v4) if v4 else "ipv6:" + ",".join(v6)


class _Generation:
    """One core channel for one endpoint set, and how many calls are still running on it."""

    __slots__ = ("active", "channel", "idle")

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self.active = 0
        self.idle = asyncio.Event()
        self.idle.set()

    def track(self, call: Any) -> Any:
        self.active += 1
        self.idle.clear()
        call.add_done_callback(self._finished)
        return call

    def _finished(self, call: Any) -> None:
        self.active -= 1
        if self.active == 0:
            self.idle.set()


class _Delegate:
    """A multicallable that forwards each call to the channel current at call time."""

    def __init__(
        self, owner: BalancedChannel, kind: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        self._owner, self._kind, self._method, self._args, self._kwargs = owner, kind, method, args, kwargs
        self._bound_to: _Generation | None = None
        self._bound: Any = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        current = self._owner._current
        if current is None:
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.UNAVAILABLE,
                grpc.aio.Metadata(),
                grpc.aio.Metadata(),
                f"no healthy instances of {self._owner.service!r} are known to discovery",
                None,
            )
        if current is not self._bound_to:
            self._bound = getattr(current.channel, self._kind)(self._method, *self._args, **self._kwargs)
            self._bound_to = current
        return current.track(self._bound(*args, **kwargs))


class _UnaryUnary(_Delegate, grpc.aio.UnaryUnaryMultiCallable[Any, Any]):
    pass


class _UnaryStream(_Delegate, grpc.aio.UnaryStreamMultiCallable[Any, Any]):
    pass


class _StreamUnary(_Delegate, grpc.aio.StreamUnaryMultiCallable[Any, Any]):
    pass


class _StreamStream(_Delegate, grpc.aio.StreamStreamMultiCallable[Any, Any]):
    pass


class BalancedChannel(grpc.aio.Channel):
    """A channel to every healthy instance of ``service``, following ``resolver``."""

    def __init__(
        self,
        service: str,
        resolver: Resolver,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        options: ChannelOptions = (),
        interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
        health_service: str | None = "",
        retire_after: float | None = None,
    ) -> None:
        self.service = service
        self._resolver = resolver
        self._credentials = credentials
        config = json.dumps(service_config(health_service=health_service))
        self._options: list[tuple[str, Any]] = [*options, ("grpc.service_config", config)]
        self._interceptors = list(interceptors)
        self._retire_after = retire_after  # None: an old channel lives until its last call ends
        self._current: _Generation | None = None
        self._endpoints: Endpoints = ()
        self._resolved = asyncio.Event()
        self._changed = asyncio.Condition()
        self._follower: SupervisedLoop | None = None
        self._retiring: dict[_Generation, asyncio.Task[None]] = {}

    @property
    def endpoints(self) -> Endpoints:
        return self._endpoints

    async def start(self, *, first_resolve_timeout: float = 5.0) -> None:
        """Follow discovery; waits (bounded) for the first answer so early calls have somewhere to go."""
        if self._follower is None:
            self._follower = SupervisedLoop(
                f"discovery:{self.service}",
                self._follow,
                # A resolver bug or a bad static table must not silently freeze the endpoint set.
                outage=Outage((Exception,), "discovery.watch_failed", self._watch_failed),
            ).start()
        try:
            async with asyncio.timeout(first_resolve_timeout):
                await self._resolved.wait()
        except TimeoutError:
            log.warning(
                "discovery.not_yet_resolved",
                service=self.service,
                waited=first_resolve_timeout,
                note="calls fail with UNAVAILABLE until discovery answers",
            )

    async def wait_for_endpoints(self, predicate: Callable[[Endpoints], bool] = bool) -> Endpoints:
        """Wait until the endpoint set satisfies ``predicate`` (default: not empty)."""
        async with self._changed:
            await self._changed.wait_for(lambda: predicate(self._endpoints))
            return self._endpoints

    async def _follow(self) -> None:
        """One watch of the resolver; it returns when the resolver is closed (then the loop ends)."""
        assert self._follower is not None
        watch = self._resolver.watch(self.service)
        try:
            async for endpoints in watch:
                self._follower.mark_healthy()
                await self._swap(endpoints)
        finally:
            await watch.aclose()  # type: ignore[attr-defined]

    def _watch_failed(self, _error: Exception) -> dict[str, Any]:
        self._resolved.set()  # an error is an answer too: start() need not wait it out
        return {"service": self.service, "keeping": [e.target for e in self._endpoints]}

    async def _swap(self, endpoints: Endpoints) -> None:
        old = self._current
        if endpoints:
            target = await _core_target(endpoints)
            if self._credentials is None:
                new = grpc.aio.insecure_channel(target, options=self._options, interceptors=self._interceptors)
            else:
                new = grpc.aio.secure_channel(
                    target, self._credentials, options=self._options, interceptors=self._interceptors
                )
            self._current = _Generation(new)
        else:
            self._current = None
        log.info(
            "discovery.endpoints_applied",
            service=self.service,
            old=[e.target for e in self._endpoints],
            new=[e.target for e in endpoints],
        )
        self._endpoints = endpoints
        self._resolved.set()
        async with self._changed:
            self._changed.notify_all()
        if old is not None:
            task = asyncio.create_task(self._retire(old), name=f"retire:{self.service}")
            self._retiring[old] = task
            task.add_done_callback(lambda _: self._retiring.pop(old, None))

    async def _retire(self, generation: _Generation) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._retire_after):
                await generation.idle.wait()
        await generation.channel.close(None)

    # -- grpc.aio.Channel -------------------------------------------------------------------

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _UnaryUnary(self, "unary_unary", method, args, kwargs)

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _UnaryStream(self, "unary_stream", method, args, kwargs)

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _StreamUnary(self, "stream_unary", method, args, kwargs)

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _StreamStream(self, "stream_stream", method, args, kwargs)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        if self._current is None:
            return (
                grpc.ChannelConnectivity.TRANSIENT_FAILURE if self._resolved.is_set() else grpc.ChannelConnectivity.IDLE
            )
        return self._current.channel.get_state(try_to_connect)

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        while self.get_state() == last_observed_state:
            current = self._current
            if current is None:
                await self.wait_for_endpoints()
                continue
            await current.channel.wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        await self.wait_for_endpoints()
        while self.get_state(try_to_connect=True) != grpc.ChannelConnectivity.READY:
            await self.wait_for_state_change(self.get_state())

    async def close(self, grace: float | None = None) -> None:
        if self._follower is not None:
            await self._follower.stop()
            self._follower = None
        generations = [g for g in (self._current, *self._retiring) if g is not None]
        self._current = None
        for task in self._retiring.values():
            task.cancel()
        await asyncio.gather(*(g.channel.close(grace) for g in generations))

    async def __aenter__(self) -> BalancedChannel:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        await self.close(None)
