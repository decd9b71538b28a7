"""`python -m services.rag`: serve the RAG service."""

from __future__ import annotations

from runtime.entry import run_service
from services.rag.config import RagSettings

if __name__ == "__main__":
    # The server module is named, not imported: it is imported only once the settings are read, so
    # a bad setting is refused without the seconds of importing it (runtime/entry.py).
    raise SystemExit(run_service(RagSettings, "services.rag.server"))
