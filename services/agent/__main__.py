"""`python -m services.agent`: serve the agent service."""

from runtime.bootstrap import run_service
from services.agent.config import AgentSettings
from services.agent.server import build

if __name__ == "__main__":
    raise SystemExit(run_service(AgentSettings, build))
