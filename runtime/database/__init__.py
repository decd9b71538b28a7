"""The database the stores share: embedded SQLite by default, PostgreSQL when a URL setting names one.

Stores are written once against ``Database``/``Transaction`` (``interface``), declare their
schema as versioned ``Migration`` steps (``migrations``), and see connection failures as
``DatabaseUnavailable`` whichever backend they run on.
"""

from runtime.database.announcer import Announcer, Wakeup
from runtime.database.errors import DatabaseUnavailable, SchemaMismatch
from runtime.database.factory import open_database, wait_until_reachable
from runtime.database.interface import Database, Dialect, Params, Result, Row, Transaction, in_list
from runtime.database.migrations import Migration, Schema
from runtime.database.postgres import lock_key
from runtime.database.urls import database_url_field, url_problem, validate_url

__all__ = [
    "Announcer",
    "Database",
    "DatabaseUnavailable",
    "Dialect",
    "Migration",
    "Params",
    "Result",
    "Row",
    "Schema",
    "SchemaMismatch",
    "Transaction",
    "Wakeup",
    "database_url_field",
    "in_list",
    "lock_key",
    "open_database",
    "url_problem",
    "validate_url",
    "wait_until_reachable",
]
