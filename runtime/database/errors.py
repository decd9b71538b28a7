"""What can go wrong with a database, in terms the services act on (no driver types leak out)."""

from __future__ import annotations

import grpc

from rpcstatus.errors import ApiError, error_info, retry_info

# The RetryInfo hint of UNAVAILABLE answers while the database is away: a pool reconnects
# within about this long once it is back.
RETRY_AFTER_S = 1.0


class DatabaseUnavailable(ApiError):
    """The database cannot be reached (refused, dropped, restarting): retry later.

    Raised in place of the driver's connection errors. It is an ``ApiError`` (UNAVAILABLE with
    ``RetryInfo``), so a handler that lets it through answers what a client can act on,
    never INTERNAL. A COMMIT whose outcome is unknown is reported the same way: the stores'
    writes are idempotent by key, so the retry is safe either way. The driver's own words
    stay in ``reason_text`` (for logs), out of the caller's message.
    """

    def __init__(self, reason_text: str, *, setting: str = "") -> None:
        super().__init__(
            grpc.StatusCode.UNAVAILABLE,
            "the service's database is unavailable; retry shortly",
            [error_info("BACKEND_UNAVAILABLE", backend="database"), retry_info(RETRY_AFTER_S)],
        )
        self.reason_text = reason_text
        self.setting = setting

    def __str__(self) -> str:
        return self.reason_text


class SchemaMismatch(RuntimeError):
    """The database holds a schema this build cannot use (written by a newer or another version)."""
