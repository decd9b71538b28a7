"""What a valid document, batch and search look like: each violation named by its field path."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from services.rag.chunking import ContentType
from services.rag.errors import InvalidArgument
from services.rag.store import DocumentVersion

_DOCUMENT_ID = re.compile(r"[A-Za-z0-9._:/-]{1,128}")
_DOCUMENT_ID_RULE = "must be 1 to 128 characters of letters, digits and . _ : / -"
CONTENT_TYPES = {"": ContentType.PLAIN_TEXT, **{t.value: t for t in ContentType}}

Violations = list[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class Limits:
    max_document_bytes: int = 1 << 20
    max_batch_documents: int = 100
    max_query_chars: int = 2000
    max_top_k: int = 50
    max_metadata_entries: int = 32
    max_metadata_key_chars: int = 64
    max_metadata_value_chars: int = 256


@dataclass(frozen=True, slots=True)
class DocumentInput:
    document_id: str
    text: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    content_type: str = ""


def batch_violations(documents: Sequence[DocumentInput], limits: Limits, *, field: str) -> Violations:
    """Everything wrong with one ingest request (``field`` names the list in the caller's request)."""
    violations: Violations = []
    if not documents:
        violations.append((field, "at least one document is required"))
    elif len(documents) > limits.max_batch_documents:
        violations.append(
            (
                field,
                f"at most {limits.max_batch_documents} documents per request, got {len(documents)};"
                " stream larger batches with StreamIngestDocuments",
            )
        )
    seen: set[str] = set()
    for index, document in enumerate(documents):
        violations += document_violations(document, limits, field=f"{field}[{index}]")
        if document.document_id in seen:
            violations.append(
                (f"{field}[{index}].document_id", f"{document.document_id!r} appears twice in one request")
            )
        seen.add(document.document_id)
    return violations


def document_violations(document: DocumentInput, limits: Limits, *, field: str) -> Violations:
    """What is wrong with one document, as (field path under ``field``, description) pairs."""
    out: Violations = []
    if not _DOCUMENT_ID.fullmatch(document.document_id):
        out.append((f"{field}.document_id", _DOCUMENT_ID_RULE))
    if not document.text.strip():
        out.append((f"{field}.text", "is required and must contain a non-whitespace character"))
    else:
        size = len(document.text.encode("utf-8"))
        if size > limits.max_document_bytes:
            out.append(
                (
                    f"{field}.text",
                    f"is {size} bytes of UTF-8; the limit is {limits.max_document_bytes} bytes:"
                    " split it into several documents",
                )
            )
    if document.content_type not in CONTENT_TYPES:
        out.append((f"{field}.content_type", "must be empty, text/plain or text/markdown"))
    if len(document.metadata) > limits.max_metadata_entries:
        out.append((f"{field}.metadata", f"at most {limits.max_metadata_entries} entries"))
    for key, value in document.metadata.items():
        if not key or len(key) > limits.max_metadata_key_chars:
            out.append((f"{field}.metadata[{key!r}]", f"keys must be 1 to {limits.max_metadata_key_chars} characters"))
        elif len(value) > limits.max_metadata_value_chars:
            out.append(
                (f"{field}.metadata[{key!r}]", f"values must be at most {limits.max_metadata_value_chars} characters")
            )
    return out


def search_violations(query: str, top_k: int, limits: Limits) -> Violations:
    violations: Violations = []
    if not query.strip():
        violations.append(("query", "is required and must contain a non-whitespace character"))
    elif len(query) > limits.max_query_chars:
        violations.append(("query", f"is {len(query)} characters; the maximum is {limits.max_query_chars}"))
    if not 1 <= top_k <= limits.max_top_k:
        violations.append(("top_k", f"must be between 1 and {limits.max_top_k}, got {top_k}"))
    return violations


def check_document_id(document_id: str) -> None:
    if not _DOCUMENT_ID.fullmatch(document_id):
        raise InvalidArgument([("document_id", _DOCUMENT_ID_RULE)])


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def document_version(document: DocumentInput) -> DocumentVersion:
    """The version an ingest of ``document`` would store (compared with the stored one)."""
    return DocumentVersion(
        content_hash(document.text), CONTENT_TYPES[document.content_type].value, dict(document.metadata)
    )
