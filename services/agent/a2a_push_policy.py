"""Where the agent may send A2A push notifications: an allow-list, and never inside the network by default.

A push URL is the caller's, and the agent POSTs to it: without a check, anyone allowed to create
a task could make the agent call its own network (cloud metadata at 169.254.169.254, admin ports
on loopback, private services). So the host must match ``allowed_hosts``, and every address it
resolves to must be public unless it falls in ``allowed_networks``. The check runs when the
config is stored and again before every delivery (a name may resolve elsewhere later).
"""

from __future__ import annotations

import asyncio
import fnmatch
import ipaddress
import socket
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class PushSettings(BaseModel):
    """A2A push notifications (AGENTMESH_AGENT_A2A_PUSH='{"allowed_networks": ["10.0.0.0/8"]}')."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Host name patterns (fnmatch, e.g. "*.partner.example") a push URL may name; "*" is any host.
    allowed_hosts: list[str] = Field(default_factory=lambda: ["*"])
    # Non-public networks a push URL may still resolve into (loopback, private, link-local are
    # refused unless listed here).
    allowed_networks: list[Network] = Field(default_factory=list)
    # Plain http:// too; production should say false.
    allow_http: bool = True
    max_attempts: int = Field(default=8, ge=1, le=100)
    initial_backoff_s: float = Field(default=1.0, gt=0)
    max_backoff_s: float = Field(default=300.0, gt=0)
    timeout_s: float = Field(default=10.0, gt=0)
    # A claimed delivery not finished within this is taken by another replica (at least once).
    claim_lease_s: float = Field(default=60.0, gt=0)


class PushUrlRefused(ValueError):
    """A push URL the policy does not allow; the message says why and which setting allows it."""


def _public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not (address.is_multicast or address.is_reserved or address.is_unspecified)


async def check_push_url(url: str, policy: PushSettings) -> None:
    """Raise ``PushUrlRefused`` unless ``policy`` allows POSTing to ``url`` now."""
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise PushUrlRefused("is not a URL") from None
    allowed_schemes = ("https", "http") if policy.allow_http else ("https",)
    if parts.scheme not in allowed_schemes:
        raise PushUrlRefused(f"must be an {' or '.join(allowed_schemes)} URL")
    host = parts.hostname or ""
    if not host:
        raise PushUrlRefused("has no host")
    if not any(fnmatch.fnmatch(host, pattern) for pattern in policy.allowed_hosts):
        raise PushUrlRefused(f"host {host!r} is not in the agent's allowed push hosts (AGENTMESH_AGENT_A2A_PUSH)")
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        raise PushUrlRefused(f"host {host!r} does not resolve") from None
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if not _public(address) and not any(address in network for network in policy.allowed_networks):
            raise PushUrlRefused(
                f"host {host!r} resolves to {address}, a loopback, private or link-local address; such push"
                " destinations are refused unless AGENTMESH_AGENT_A2A_PUSH lists the network in allowed_networks"
            )
