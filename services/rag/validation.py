"""Request validation for the RAG service: every violation names its field (AIP-193 BadRequest)."""

from __future__ import annotations

import re
from collections.abc import Iterable

from agentmesh.rag.v1 import document_pb2, rag_service_pb2
from runtime.errors import ApiError, invalid_argument
from services.rag.config import RagSettings

DOCUMENT_ID = re.compile(r"^[A-Za-z0-9._:/-]{1,128}$")
CONTENT_TYPES = frozenset({"", "text/plain", "text/markdown"})
MAX_QUERY_CHARS = 2000
MAX_METADATA_PAIRS = 32
MAX_METADATA_CHARS = 256


def _raise_if(violations: list[tuple[str, str]]) -> None:
    if violations:
        raise invalid_argument(violations)


def document_id_violation(field: str, document_id: str) -> tuple[str, str] | None:
    if not document_id:
        return field, "is required"
    if not DOCUMENT_ID.match(document_id):
        return field, "must be 1-128 characters of letters, digits and . _ : / -"
    return None


def _metadata_violations(field: str, metadata: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    pairs = list(metadata)
    out: list[tuple[str, str]] = []
    if len(pairs) > MAX_METADATA_PAIRS:
        out.append((field, f"at most {MAX_METADATA_PAIRS} entries"))
    for key, value in pairs:
        if not key or len(key) > MAX_METADATA_CHARS or len(value) > MAX_METADATA_CHARS:
            out.append(
                (
                    f"{field}[{key!r}]",
                    f"keys must be non-empty; keys and values at most {MAX_METADATA_CHARS} chars",
                )
            )
    return out


def document_violations(field: str, doc: document_pb2.Document, settings: RagSettings) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    if (v := document_id_violation(f"{field}.document_id", doc.document_id)) is not None:
        out.append(v)
    size = len(doc.text.encode())
    if not doc.text.strip():
        out.append((f"{field}.text", "is required and must not be blank"))
    elif size > settings.max_document_bytes:
        out.append((f"{field}.text", f"is {size} bytes; the limit is {settings.max_document_bytes} bytes"))
    if doc.content_type not in CONTENT_TYPES:
        out.append((f"{field}.content_type", "must be text/plain or text/markdown"))
    out += _metadata_violations(f"{field}.metadata", doc.metadata.items())
    return out


def validate_ingest(request: rag_service_pb2.IngestDocumentsRequest, settings: RagSettings) -> None:
    violations: list[tuple[str, str]] = []
    if not request.documents:
        violations.append(("documents", "at least one document is required"))
    elif len(request.documents) > settings.max_batch_documents:
        violations.append(
            ("documents", f"at most {settings.max_batch_documents} per request; use StreamIngestDocuments")
        )
    seen: set[str] = set()
    for i, doc in enumerate(request.documents):
        violations += document_violations(f"documents[{i}]", doc, settings)
        if doc.document_id in seen:
            violations.append((f"documents[{i}].document_id", f"duplicate id {doc.document_id!r} in request"))
        seen.add(doc.document_id)
    _raise_if(violations)


def validate_search(request: rag_service_pb2.SearchRequest, settings: RagSettings) -> int:
    """Returns the effective top_k."""
    violations: list[tuple[str, str]] = []
    if not request.query.strip():
        violations.append(("query", "is required and must not be blank"))
    elif len(request.query) > MAX_QUERY_CHARS:
        violations.append(("query", f"at most {MAX_QUERY_CHARS} characters"))
    if request.top_k < 0 or request.top_k > settings.max_top_k:
        violations.append(("top_k", f"must be between 1 and {settings.max_top_k} (0 means {settings.default_top_k})"))
    violations += _metadata_violations("metadata_filter", request.metadata_filter.items())
    _raise_if(violations)
    return request.top_k or settings.default_top_k


def validate_document_id(document_id: str) -> None:
    if (v := document_id_violation("document_id", document_id)) is not None:
        raise invalid_argument([v])


__all__ = ["ApiError", "validate_document_id", "validate_ingest", "validate_search"]
