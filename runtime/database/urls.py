"""The database URLs a setting may hold: one list, read by settings validation and by the backends.

A URL that passes a service's settings is one the backend opens; there is no second list to
fall out of step with it.
"""

from __future__ import annotations

# SQLAlchemy's driver names for PostgreSQL; the backend always connects through asyncpg.
POSTGRES_DRIVERS = ("postgresql", "postgres", "postgresql+asyncpg")
POSTGRES_SCHEMES = tuple(f"{driver}://" for driver in POSTGRES_DRIVERS)
EXAMPLE_URL = "postgresql://user@host:port/dbname"


def url_problem(url: str) -> str | None:
    """What is wrong with ``url`` as a database URL setting (None: a backend accepts it; "" is SQLite)."""
    if not url or url.startswith(POSTGRES_SCHEMES):
        return None
    scheme = url.split("://", 1)[0] if "://" in url else url[:20]
    return (
        f"{scheme!r} is not a database URL scheme: expected {EXAMPLE_URL},"
        " or leave it unset for the embedded SQLite file in the data dir"
    )


def database_url_field(url: str) -> str:
    """A pydantic field validator for a database URL setting: the settings error then names the
    variable, and this message says what it accepts."""
    problem = url_problem(url)
    if problem is not None:
        raise ValueError(problem)
    return url


def validate_url(url: str, *, setting: str) -> str:
    """The URL if a backend accepts it; otherwise a ValueError naming ``setting`` and what it takes."""
    problem = url_problem(url)
    if problem is not None:
        raise ValueError(f"{setting}: {problem}")
    return url
