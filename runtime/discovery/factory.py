"""Building the configured discovery backend: one switch, the same interfaces either way."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import grpc

from runtime.discovery.consul import ConsulResolver
from runtime.discovery.consul_client import ConsulAddress
from runtime.discovery.endpoints import Resolver
from runtime.discovery.registration import ConsulRegistrar, ServiceRegistration
from runtime.discovery.settings import DiscoverySettings
from runtime.discovery.static import StaticResolver
from runtime.discovery.upstreams import DiscoveryUpstreams


def consul_address(settings: DiscoverySettings) -> ConsulAddress:
    return ConsulAddress(settings.consul_http_addr, token=settings.consul_http_token)


def build_resolver(settings: DiscoverySettings, *, static: Mapping[str, Sequence[str]]) -> Resolver:
    """Consul when configured; otherwise the static table (a JSON file when named, else ``static``)."""
    if settings.discovery == "consul":
        return ConsulResolver(consul_address(settings), tag=settings.consul_tag)
    if settings.static_targets_file is not None:
        return StaticResolver.from_file(settings.static_targets_file)
    return StaticResolver(static)


def build_registrar(
    settings: DiscoverySettings,
    *,
    service: str,
    port: int,
    tags: Sequence[str] = (),
    grpc_use_tls: bool = False,
    tls_server_name: str = "",
) -> ConsulRegistrar | None:
    """The registrar for this instance, or None with static discovery (nothing to register with)."""
    if settings.discovery != "consul":
        return None
    registration = ServiceRegistration(
        name=service,
        address=settings.advertise_address,
        port=port,
        version=settings.service_version,
        tags=tuple(tags),
        check_interval=settings.check_interval_seconds,
        check_timeout=settings.check_timeout_seconds,
        deregister_critical_after=settings.deregister_critical_after_seconds,
        grpc_use_tls=grpc_use_tls,
        tls_server_name=tls_server_name,
    )
    return ConsulRegistrar(consul_address(settings), registration)


async def build_upstreams(
    settings: DiscoverySettings,
    *,
    static: Mapping[str, Sequence[str]],
    interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
    credentials: grpc.ChannelCredentials | None = None,
) -> DiscoveryUpstreams:
    """Channels to the backends named in ``static``, resolved by the configured discovery.

    ``static`` gives each backend's endpoints for static discovery; with Consul its keys are the
    Consul service names. Either way the channels balance and health-check alike.
    """
    upstreams = DiscoveryUpstreams(
        build_resolver(settings, static=static),
        static.keys(),
        interceptors=interceptors,
        credentials=credentials,
        health_checks=settings.client_health_checks,
    )
    await upstreams.start()
    return upstreams
