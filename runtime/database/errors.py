"""What can go wrong with a database, in terms the services act on (no driver types leak out)."""

from __future__ import annotations


class DatabaseUnavailable(Exception):
    """The database cannot be reached (refused, dropped, restarting): retry later, nothing was committed.

    Raised in place of the driver's connection errors, so a service answers UNAVAILABLE with a
    retry hint instead of INTERNAL, and a transaction that raised it is known not to have
    committed (a COMMIT whose outcome is unknown is reported the same way: the stores' writes
    are idempotent by key, so a retry is safe either way).
    """

    def __init__(self, message: str, *, setting: str = "") -> None:
        super().__init__(message)
        self.setting = setting


class SchemaMismatch(RuntimeError):
    """The database holds a schema this build cannot use (written by a newer or another version)."""
