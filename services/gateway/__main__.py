"""`python -m services.gateway`: serve the gateway."""

from runtime.bootstrap import run_service
from services.gateway.config import GatewaySettings
from services.gateway.server import build

if __name__ == "__main__":
    raise SystemExit(run_service(GatewaySettings, build))
