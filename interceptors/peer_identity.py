"""Who is on the other end of an mTLS connection, from the verified client certificate.

gRPC core has already verified the certificate chain against the server's trust roots
by the time a handler runs; it then exposes the certificate's names in
``context.auth_context()``. Checked by experiment (grpc 1.85, TLS 1.3, client cert with
a SPIFFE URI SAN and a DNS SAN), the properties are::

    transport_security_type       [b'ssl']
    x509_subject_alternative_name [b'spiffe://agentmesh.local/ns/default/sa/gateway',
                                   b'gateway.agentmesh.local']
    peer_spiffe_id                [b'spiffe://agentmesh.local/ns/default/sa/gateway']
    peer_uri                      [b'spiffe://agentmesh.local/ns/default/sa/gateway']
    peer_dns                      [b'gateway.agentmesh.local']
    x509_common_name              [b'gw']

``peer_spiffe_id`` is set only when the certificate carries exactly one ``spiffe://``
URI SAN, as the SPIFFE X.509-SVID spec requires, so it is the identity of choice; DNS
SANs are the fallback for workloads without SPIFFE IDs. The subject common name is
deliberately ignored (RFC 6125 deprecates it for identity). Without a client
certificate (plaintext or server-only TLS) there is no peer identity.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc.aio

# Allowed-peer entry that admits any peer with a verified certificate identity.
ANY_VERIFIED_PEER = "*"


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """Names from the peer's verified certificate."""

    spiffe_id: str | None
    dns_names: tuple[str, ...]

    @property
    def primary(self) -> str:
        """The one name to log and scope by: the SPIFFE ID, else the first DNS SAN."""
        return self.spiffe_id if self.spiffe_id is not None else self.dns_names[0]

    def matches(self, allowed: Iterable[str]) -> bool:
        """True if any allowed entry names this peer (exact SPIFFE ID or DNS name, or ``*``)."""
        names = {ANY_VERIFIED_PEER, *self.dns_names}
        if self.spiffe_id is not None:
            names.add(self.spiffe_id)
        return not names.isdisjoint(allowed)


def _decoded(values: Iterable[bytes] | None) -> list[str]:
    return [v.decode("utf-8", "replace") for v in values or ()]


def peer_identity_from_auth_context(auth_context: Mapping[str, Iterable[bytes]]) -> PeerIdentity | None:
    spiffe = _decoded(auth_context.get("peer_spiffe_id"))
    dns = tuple(_decoded(auth_context.get("peer_dns")))
    if not spiffe and not dns:
        return None
    return PeerIdentity(spiffe_id=spiffe[0] if spiffe else None, dns_names=dns)


def peer_identity(context: grpc.aio.ServicerContext[Any, Any]) -> PeerIdentity | None:
    """The mTLS peer's identity for this call, or None when the peer presented no certificate."""
    return peer_identity_from_auth_context(context.auth_context())
