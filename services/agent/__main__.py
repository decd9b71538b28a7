"""`python -m services.agent`: serve the agent service."""

from __future__ import annotations

from runtime.entry import run_service
from services.agent.config import AgentSettings

if __name__ == "__main__":
    # The server module is named, not imported: it is imported only once the settings are read, so
    # a bad setting is refused without the seconds of importing it (runtime/entry.py).
    raise SystemExit(run_service(AgentSettings, "services.agent.server"))
