"""Domain errors of the knowledge base; the servicer maps each to a gRPC status."""

from __future__ import annotations

from collections.abc import Sequence


class KnowledgeBaseError(Exception):
    """Base of the errors a caller can act on."""


class InvalidArgument(KnowledgeBaseError):
    """Request fields are invalid: (field path, what is wrong) pairs, as AIP-193 field violations."""

    def __init__(self, violations: Sequence[tuple[str, str]]) -> None:
        if not violations:
            raise ValueError("InvalidArgument needs at least one violation")
        super().__init__("; ".join(f"{field}: {description}" for field, description in violations))
        self.violations = tuple(violations)

    @property
    def fields(self) -> list[str]:
        return [field for field, _ in self.violations]


class DocumentNotFound(KnowledgeBaseError):
    def __init__(self, document_id: str) -> None:
        super().__init__(f"document {document_id!r} does not exist")
        self.document_id = document_id


class DenseRetrievalDisabled(KnowledgeBaseError):
    """Dense or hybrid search was asked for on a knowledge base without an embedder."""

    def __init__(self) -> None:
        super().__init__(
            "dense retrieval is disabled on this server; use MODE_BM25,"
            " or enable it with AGENTMESH_RAG_DENSE_ENABLED=true"
        )


class NotReady(KnowledgeBaseError):
    """Called before the knowledge base has loaded the store (the database is awaited at start)."""

    def __init__(self) -> None:
        super().__init__("the knowledge base is still loading (waiting for its database); retry shortly")
