"""`python -m services.agent`: serve the agent service."""

from __future__ import annotations

from typing import TYPE_CHECKING

from runtime.entry import run_service
from services.agent.config import AgentSettings

if TYPE_CHECKING:
    from runtime.bootstrap import ServiceBuild


def import_build() -> ServiceBuild[AgentSettings]:
    # Imported only once the settings are read: a bad setting is refused without the seconds of
    # importing the server (runtime/entry.py).
    from services.agent.server import build  # noqa: PLC0415

    return build


if __name__ == "__main__":
    raise SystemExit(run_service(AgentSettings, import_build))
