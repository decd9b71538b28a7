"""Building the configured discovery backend: one switch, the same interfaces either way."""

from __future__ import annotations

from collections.abc import Sequence

from runtime.discovery.consul import ConsulResolver
from runtime.discovery.consul_client import ConsulAddress
from runtime.discovery.endpoints import Resolver
from runtime.discovery.registration import ConsulRegistrar, ServiceRegistration
from runtime.discovery.settings import DiscoverySettings
from runtime.discovery.static import StaticResolver


def consul_address(settings: DiscoverySettings) -> ConsulAddress:
    return ConsulAddress(settings.consul_http_addr, token=settings.consul_http_token)


def build_resolver(settings: DiscoverySettings) -> Resolver:
    if settings.discovery == "consul":
        return ConsulResolver(consul_address(settings), tag=settings.consul_tag)
    if settings.static_targets_file is not None:
        return StaticResolver.from_file(settings.static_targets_file)
    return StaticResolver(settings.static_targets)


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
