"""Each service's own token check under the policy: what the edge enforces, verified again behind it.

The edge refuses a call without a valid token before the gateway sees it; the services check the
forwarded token themselves too (defence in depth: a hop that skipped the edge, or a compromised
one, still meets a check). Both sides read the same policy, so they accept the same tokens and
leave the same methods public. The result is the value of ``AGENTMESH_<SERVICE>_AUTH``
(``runtime.security.AuthSettings``).
"""

from __future__ import annotations

from typing import Any

from mesh.policy import Policy, parse_duration


def service_auth(policy: Policy, jwks_file: str) -> dict[str, Any]:
    """``AuthSettings`` fields for a service verifying tokens against ``jwks_file``."""
    return {
        "jwks_file": jwks_file,
        "issuer": policy.jwt.issuer,
        "audience": policy.jwt.audience,
        "leeway_s": parse_duration(policy.jwt.clock_skew).total_seconds(),
        "public_methods": list(policy.jwt.public_methods),
    }
