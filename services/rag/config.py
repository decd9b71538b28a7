"""Settings of the RAG service (env prefix `AGENTMESH_RAG_`)."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from runtime.config import ModelServiceSettings
from runtime.database import database_url_field


class RagSettings(ModelServiceSettings):
    model_config = SettingsConfigDict(env_prefix="AGENTMESH_RAG_", env_file=".env", extra="ignore", frozen=True)

    port: int = Field(default=50053, ge=0, le=65535)
    max_document_bytes: int = Field(default=1024 * 1024, gt=0)
    max_batch_documents: int = Field(default=100, gt=0)
    max_top_k: int = Field(default=50, gt=0)
    # Dense retrieval runs all-MiniLM-L6-v2 in a child process (~200 MB; its graph exported with torch
    # on the first start: seconds), so it is opt-in: BM25 alone starts instantly and needs neither.
    # Turning it on later embeds the chunks already stored, once, on the next start.
    dense_enabled: bool = False
    chunk_size: int = Field(default=800, ge=32, description="target chunk size in characters")
    chunk_overlap: int = Field(default=120, ge=0, description="characters repeated between consecutive chunks")
    # Index snapshots are saved this long after the last change (a burst is saved once), and on stop.
    index_save_delay_s: float = Field(default=2.0, ge=0)
    # Documents, chunks and embeddings in a database every replica shares
    # (postgresql://user@host:port/db); unset: the embedded SQLite file in the data dir.
    database_url: str = ""
    # Replicas wake at once on each commit's notification; this poll is the safety net for a
    # lost one (seconds).
    follow_poll_s: float = Field(default=5.0, gt=0)
    _service_database_urls = field_validator("database_url")(database_url_field)

    @model_validator(mode="after")
    def _overlap_below_half_the_size(self) -> RagSettings:
        if self.chunk_overlap >= self.chunk_size // 2:
            raise ValueError("chunk_overlap must be below half of chunk_size")
        return self
