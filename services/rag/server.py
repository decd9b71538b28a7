"""Assemble the RAG service's server from its settings (shared bootstrap)."""

from __future__ import annotations

from agentmesh.rag.v1 import rag_service_pb2, rag_service_pb2_grpc
from runtime.bootstrap import ServerPlan, ServiceBinding
from runtime.security import auth_interceptor
from services.rag.config import RagSettings
from services.rag.document_store import DocumentStore
from services.rag.servicer import RagServicer

SERVICE_NAME = rag_service_pb2.DESCRIPTOR.services_by_name["RagService"].full_name


async def build(settings: RagSettings) -> ServerPlan:
    store = DocumentStore(settings.data_dir / "rag.sqlite3")
    await store.open()
    servicer = RagServicer(store, settings)
    auth = auth_interceptor(settings.auth, service="rag")
    return ServerPlan(
        settings=settings,
        interceptors=[] if auth is None else [auth],
        bindings=[
            ServiceBinding(SERVICE_NAME, lambda s: rag_service_pb2_grpc.add_RagServiceServicer_to_server(servicer, s))
        ],
        on_stopped=[store.close],
    )
