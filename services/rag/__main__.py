"""`python -m services.rag`: serve the RAG service."""

from runtime.bootstrap import run_service
from services.rag.config import RagSettings
from services.rag.server import build

if __name__ == "__main__":
    raise SystemExit(run_service(RagSettings, build))
