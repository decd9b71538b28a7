"""Refuse new calls while the server drains, so clients fail over instead of being cut off.

Compiled into the server layer with the other concerns (not run in front of it), so a refusal
is traced, counted and logged like any other outcome. Health checks and reflection are not gated (the
default matcher leaves them out), so checkers can see NOT_SERVING during the drain.
"""

from __future__ import annotations

import grpc

from interceptors._typing import Context
from interceptors.layer import Check, Concern, MethodInfo
from interceptors.selector import NOT_PROBES, Matcher
from rpcstatus.errors import unavailable


class DrainInterceptor(Concern):
    """Set ``draining`` and every later call of a gated method ends UNAVAILABLE (reason DRAINING)."""

    def __init__(self, *, select: Matcher = NOT_PROBES) -> None:
        self.draining = False
        self.select = select
        self._refusal = unavailable(
            "server is shutting down; retry on another instance", reason="DRAINING", retry_after_s=0.1
        ).to_status()

    def compile(self, info: MethodInfo) -> Check:
        refusal = self._refusal

        def gate(_context: Context) -> grpc.Status | None:
            return refusal if self.draining else None

        return Check(gate)
