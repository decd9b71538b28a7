"""Domain errors of the knowledge base; the servicer maps each to a gRPC status."""

from __future__ import annotations


class KnowledgeBaseError(Exception):
    """Base of the errors a caller can act on."""


class InvalidArgument(KnowledgeBaseError):
    """A request field is invalid; ``field`` is its path in the request (AIP-193 field violation)."""

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}")
        self.field = field
        self.description = description

    def within(self, prefix: str) -> InvalidArgument:
        """The same violation with its field path nested under ``prefix`` (e.g. ``documents[2]``)."""
        return InvalidArgument(f"{prefix}.{self.field}", self.description)


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
