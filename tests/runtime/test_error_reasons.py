"""ErrorInfo reasons are a contract: only the values of agentmesh.common.v1.ErrorReason are sent."""

from __future__ import annotations

import pytest

from rpcstatus.errors import DOMAIN, KNOWN_REASONS, error_info


def test_a_listed_reason_is_sent_without_its_enum_prefix_in_the_agentmesh_domain() -> None:
    info = error_info("CIRCUIT_OPEN", target="rag")
    assert (info.reason, info.domain, dict(info.metadata)) == ("CIRCUIT_OPEN", DOMAIN, {"target": "rag"})


def test_every_reason_the_interceptors_and_services_use_is_listed() -> None:
    used = {
        "INVALID_FIELD", "NOT_FOUND", "INVALID_STATE", "BACKEND_UNAVAILABLE", "DRAINING", "CIRCUIT_OPEN",
        "RATE_LIMITED", "IDEMPOTENCY_KEY_REUSED", "IDEMPOTENCY_IN_PROGRESS", "TOKEN_MISSING", "TOKEN_EXPIRED",
        "SCOPE_MISSING", "METHOD_NOT_IN_POLICY", "PEER_NOT_ALLOWED", "PEER_CERTIFICATE_MISSING", "CONCURRENT_UPDATE",
    }  # fmt: skip
    assert used <= KNOWN_REASONS


def test_an_unlisted_reason_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match=r"not in agentmesh\.common\.v1\.ErrorReason"):
        error_info("SOMETHING_NEW")
