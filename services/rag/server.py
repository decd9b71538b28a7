"""Assemble the RAG service's server from its settings (shared bootstrap)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from opentelemetry.sdk.trace import SpanProcessor

from agentmesh.rag.v1 import rag_service_pb2, rag_service_pb2_grpc
from runtime.assembly import assembling
from runtime.bootstrap import ServerPlan, ServiceBinding
from runtime.database import open_database, wait_until_reachable
from runtime.discovery.settings import DiscoverySettings
from runtime.embedding import Embedder, shared_minilm
from runtime.live_config.settings import DynamicSettings
from runtime.processes import current_worker
from runtime.settings_errors import InvalidSetting
from services.rag.chunking import ChunkingOptions
from services.rag.config import RagSettings
from services.rag.following import FollowingMetrics
from services.rag.knowledge_base import KnowledgeBase, Limits
from services.rag.servicer import RagServicer

_SQLITE_SIBLING_POLL_S = 0.25

SERVICE_NAME = rag_service_pb2.DESCRIPTOR.services_by_name["RagService"].full_name


async def build(
    settings: RagSettings,
    discovery: DiscoverySettings | None = None,
    *,
    dynamic: DynamicSettings | None = None,
    span_processors: Sequence[SpanProcessor] = (),
) -> ServerPlan:
    async with assembling(
        settings, service="rag", discovery=discovery, dynamic=dynamic, span_processors=span_processors
    ) as service:
        chains, life = service.chains, service.life
        embedder: Embedder | None = None
        if settings.dense_enabled:
            # In a child process, as the agent's engine has it: a forward pass run here would take
            # the GIL from the event loop that serves Search. Starting it takes seconds: off the loop.
            # Its ONNX graph is kept in the model cache (exported there on the first start: seconds).
            try:
                embedder = await asyncio.to_thread(shared_minilm, settings.model_cache)
            except ValueError as error:  # a thread count that is no count
                raise InvalidSetting(str(error)) from None
        database = life.closing(
            await open_database(
                settings.database_url,
                sqlite_path=settings.data_dir / "rag" / "rag.sqlite3",
                setting="AGENTMESH_RAG_DATABASE_URL",
            )
        )
        worker = current_worker()
        poll_s = settings.follow_poll_s
        if not settings.database_url and worker.count > 1:
            # SQLite wakes only the committing process: sibling workers' commits are found by
            # polling (one single-row read), so poll often.
            poll_s = min(poll_s, _SQLITE_SIBLING_POLL_S)
        knowledge = KnowledgeBase.create(
            settings.data_dir / "rag",
            database=database,
            # Workers of one instance share its data dir: each saves its own indexes.
            index_name="index" if worker.index == 0 else f"index-worker-{worker.index}",
            metrics=FollowingMetrics(chains.metrics.registry),
            embedder=embedder,
            chunking=ChunkingOptions(size=settings.chunk_size, overlap=settings.chunk_overlap),
            limits=Limits(
                max_document_bytes=settings.max_document_bytes,
                max_batch_documents=settings.max_batch_documents,
                max_top_k=settings.max_top_k,
            ),
            save_delay_s=settings.index_save_delay_s,
        )

        async def load_knowledge(_port: int) -> None:
            # Once listening, not in build(): a database that is not up yet is waited for (one
            # log line naming the setting, then backoff) while health says NOT_SERVING.
            await wait_until_reachable(database)
            await knowledge.start()
            life.on_close(knowledge.close, name="knowledge base")
            # Commits of other replicas (and lost notifications) reach this replica's searches here.
            life.keep_running(knowledge.follower(poll_s=poll_s))

        life.on_started(load_knowledge)
        servicer = RagServicer(knowledge, settings)
        return service.plan(
            [ServiceBinding(SERVICE_NAME, lambda s: rag_service_pb2_grpc.add_RagServiceServicer_to_server(servicer, s))]
        )
