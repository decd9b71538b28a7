"""Assemble the RAG service's server from its settings (shared bootstrap)."""

from __future__ import annotations

from agentmesh.rag.v1 import rag_service_pb2, rag_service_pb2_grpc
from runtime.bootstrap import ServerPlan, ServiceBinding
from runtime.discovery.server_hooks import add_registration
from runtime.discovery.settings import DiscoverySettings
from runtime.live_config import live_config_for
from services.rag.config import RagSettings
from services.rag.document_store import DocumentStore
from services.rag.servicer import RagServicer

SERVICE_NAME = rag_service_pb2.DESCRIPTOR.services_by_name["RagService"].full_name


async def build(settings: RagSettings, discovery: DiscoverySettings | None = None) -> ServerPlan:
    discovery = discovery or DiscoverySettings()
    # Dynamic settings (rate limits, breaker thresholds, route weights, flags); what enforces
    # them subscribes here: `live_config.subscribe(on_change)`, `live_config.current`.
    live_config = live_config_for(discovery, service="rag", data_dir=settings.data_dir)
    store = DocumentStore(settings.data_dir / "rag.sqlite3")
    await store.open()
    servicer = RagServicer(store, settings)
    plan = ServerPlan(
        settings=settings,
        bindings=[
            ServiceBinding(SERVICE_NAME, lambda s: rag_service_pb2_grpc.add_RagServiceServicer_to_server(servicer, s))
        ],
        on_stopped=[store.close],
    )
    add_registration(plan, discovery, service="rag")
    live_config.attach(plan)
    return plan
