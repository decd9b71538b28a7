"""`python -m services.gateway`: serve the gateway."""

from __future__ import annotations

from runtime.entry import run_service
from services.gateway.config import GatewaySettings

if __name__ == "__main__":
    # The server module is named, not imported: it is imported only once the settings are read, so
    # a bad setting is refused without the seconds of importing it (runtime/entry.py).
    raise SystemExit(run_service(GatewaySettings, "services.gateway.server"))
