"""Settings of the RAG service (env prefix `AGENTMESH_RAG_`)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from runtime.config import ServiceSettings


class RagSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="AGENTMESH_RAG_", env_file=".env", extra="ignore", frozen=True)

    port: int = Field(default=50053, ge=0, le=65535)
    max_document_bytes: int = Field(default=1024 * 1024, gt=0)
    max_batch_documents: int = Field(default=100, gt=0)
    max_top_k: int = Field(default=50, gt=0)
    default_top_k: int = Field(default=5, gt=0)
