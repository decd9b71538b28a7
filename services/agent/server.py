"""Assemble the agent service from its settings: stores, event bus, workflow, workers, servicer."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Sequence

from opentelemetry.sdk.trace import SpanProcessor

from agentmesh.agent.v1 import agent_service_pb2, agent_service_pb2_grpc
from runtime.assembly import Assembly, assembling
from runtime.bootstrap import ServerPlan, ServiceBinding
from runtime.database import Database, open_database, wait_until_reachable
from runtime.discovery.factory import build_upstreams
from runtime.discovery.settings import DiscoverySettings
from runtime.discovery.upstreams import DiscoveryUpstreams
from runtime.events.bus import EventBus
from runtime.events.in_process import InProcessEventBus
from runtime.events.outbox import Outbox
from runtime.events.redis_streams import RedisStreamsEventBus
from runtime.instance import claim_instance_id
from runtime.lifespan import Lifespan
from runtime.live_config.enforce import follow_live_config
from runtime.live_config.settings import DynamicSettings
from runtime.resilience import upstream_guards
from runtime.settings_errors import InvalidSetting
from services.agent.a2a_service import a2a_binding
from services.agent.budget import ToolBudget
from services.agent.cancellations import Cancellations
from services.agent.commands import RunCommands
from services.agent.config import AgentSettings
from services.agent.decision import Preloads, load_decision_engine
from services.agent.executor import RunExecutor
from services.agent.projections import RunProjection
from services.agent.retrieval import RagRetriever
from services.agent.rules import FallbackRule, FallbackRules, ReviewPolicy
from services.agent.run_queue import UnstartedRuns
from services.agent.run_store import RunStore
from services.agent.saga_log import SagaLog
from services.agent.servicer import AgentServicer
from services.agent.workflow import RunWorkflow, WorkflowOptions

SERVICE_NAME = agent_service_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name


async def open_databases(life: Lifespan, settings: AgentSettings) -> tuple[Database, Database]:
    """The write database (runs, event log, outbox, saga log, tool budget: one transaction scope)
    and the read model's: SQLite files in the data dir by default, else the configured URLs
    (the read model in the same database unless it has its own)."""
    db = life.closing(
        await open_database(
            settings.database_url,
            sqlite_path=settings.write_db_path,
            setting="AGENTMESH_AGENT_DATABASE_URL",
            pool_size=settings.database_connections,
        )
    )
    if settings.database_url and not settings.read_database_url:
        return db, db
    read_db = life.closing(
        await open_database(
            settings.read_database_url,
            sqlite_path=settings.read_db_path,
            setting="AGENTMESH_AGENT_READ_DATABASE_URL",
            pool_size=settings.database_connections,
        )
    )
    return db, read_db


async def open_query_pool(life: Lifespan, settings: AgentSettings) -> Database | None:
    """On PostgreSQL, a pool of the write database's own for callers' reads of one run (GetRun, A2A
    GetTask), which executions and CreateRun never hold; None on SQLite or with a size of 0."""
    if not settings.database_url or not settings.database_query_pool_size:
        return None
    return life.closing(
        await open_database(
            settings.database_url,
            sqlite_path=settings.write_db_path,
            setting="AGENTMESH_AGENT_DATABASE_URL",
            pool_size=settings.database_query_pool_size,
        )
    )


def event_bus(settings: AgentSettings) -> EventBus:
    if settings.event_bus == "redis":
        return RedisStreamsEventBus.from_url(settings.redis_url)
    return InProcessEventBus()


def _workflow(
    life: Lifespan,
    settings: AgentSettings,
    *,
    store: RunStore,
    saga_log: SagaLog,
    budget: ToolBudget,
    upstreams: DiscoveryUpstreams,
) -> RunWorkflow:
    """The run workflow with its decision engine (its model loading in the background)."""
    try:
        engine = load_decision_engine(settings.decision_engine, settings.decision_engine_options)
    except (ValueError, TypeError, ImportError, AttributeError) as error:
        # An unknown engine, a factory that is not there, or options it does not take.
        raise InvalidSetting(
            f"AGENTMESH_AGENT_DECISION_ENGINE={settings.decision_engine} with AGENTMESH_AGENT_DECISION_ENGINE_OPTIONS:"
            f" {error}"
        ) from None
    life.on_close(engine.close, name="decision engine")
    if isinstance(engine, Preloads):
        # A model takes seconds to load: it loads while the agent already serves (the extractive engine
        # scores lexically until it is there), so start-up and health do not wait for torch.
        try:
            # Files derived from the model (its ONNX graph) are kept in the model cache (the data
            # dir's, or one the host's replicas share).
            engine.preload(model_cache=settings.model_cache)
        except ValueError as error:  # a setting the model reads, such as its thread count
            raise InvalidSetting(str(error)) from None
    return RunWorkflow(
        store=store,
        saga_log=saga_log,
        budget=budget,
        retriever=RagRetriever(lambda: upstreams.channel("rag"), timeout_s=settings.retrieval_timeout_s),
        engine=engine,
        fallback=FallbackRules([FallbackRule(r.pattern, r.answer) for r in settings.fallback_rules]),
        review=ReviewPolicy(
            min_confidence=settings.review_min_confidence, sensitive_terms=settings.review_sensitive_terms
        ),
        options=WorkflowOptions(
            decision_timeout=settings.decision_timeout_s,
            top_k=settings.retrieval_top_k,
            tool_calls_per_run=settings.tool_calls_per_run,
        ),
    )


def _executor(life: Lifespan, settings: AgentSettings, workflow: RunWorkflow) -> RunExecutor:
    # With role "execute" the backlog is the shared one: its workers only take the runs they claim.
    backlog = settings.backlog if settings.role == "all" else 0
    executor = RunExecutor(workflow.drive, workers=settings.workers, backlog=backlog)
    life.on_close(lambda: executor.shutdown(grace_s=settings.grace_period_s), name="run executor")
    return executor


async def build(
    settings: AgentSettings,
    discovery: DiscoverySettings | None = None,
    *,
    dynamic: DynamicSettings | None = None,
    span_processors: Sequence[SpanProcessor] = (),
) -> ServerPlan:
    # Everything opened below registers its close on the assembly's lifespan, where it is
    # opened; a failure half-way closes what was opened (runtime/lifespan.py).
    async with assembling(
        settings,
        service="agent",
        discovery=discovery,
        dynamic=dynamic,
        span_processors=span_processors,
        database_url=settings.database_url,
    ) as service:
        return await _assemble(service, settings)


async def _assemble(service: Assembly, settings: AgentSettings) -> ServerPlan:
    life, chains = service.life, service.chains
    db, read_db = await open_databases(life, settings)
    outbox = Outbox(db)
    queries = await open_query_pool(life, settings)
    store = RunStore(db, outbox, queries=queries)
    instance = life.closing(claim_instance_id(settings.instance_id, data_dir=settings.data_dir)).name
    saga_log = SagaLog(db, owner=instance, lease_s=settings.saga_lease_s)
    budget = ToolBudget(db, max_units_per_owner=settings.tool_budget_per_caller)
    projection = RunProjection(read_db, instance=instance)

    async def prepare_databases(_port: int) -> None:
        # Here rather than in build(): a database that is not up yet is waited for (logged once,
        # backoff) while the server answers health checks NOT_SERVING, instead of a crash loop.
        for database in {id(db): db, id(read_db): read_db}.values():
            await wait_until_reachable(database)
        for component in (store, saga_log, budget, projection):
            await component.create_schema()
        if queries is not None:
            # Every connection opened now, not by the first reads of a burst: a connection through the
            # network costs several round trips, which that read would wait for.
            await asyncio.gather(*(queries.ping() for _ in range(settings.database_query_pool_size)))

    life.on_started(prepare_databases)

    bus = life.closing(event_bus(settings))

    async def relay_last_commits() -> None:
        # A last relay so events of the final commits are not left for the next start.
        with contextlib.suppress(Exception):
            await outbox.relay_once(bus)

    life.on_close(relay_last_commits)
    guards = upstream_guards(
        settings.upstream_resilience,
        target_of=lambda _method: "rag",
        on_state_change=chains.metrics.breaker_state_changed,
        service_token_file=settings.service_token_file,
    )
    # Retries are the retry interceptor's alone (it honours RetryInfo, the deadline and the
    # breaker); the channels add no service-config retryPolicy on top.
    upstreams = await build_upstreams(
        service.discovery,
        static={"rag": settings.rag_endpoints},
        interceptors=chains.client_interceptors(
            forwarding=guards.forwarding, retry=guards.retry, circuit_breaker=guards.circuit_breaker
        ),
    )
    life.on_close(upstreams.close, name="upstreams")
    await follow_live_config(service.live_config, breakers=guards.breakers, upstreams=upstreams)
    unstarted = None if settings.role == "all" else UnstartedRuns(db, saga_log, backlog=settings.backlog)
    # A "serve" replica executes nothing: no workflow, no decision engine (nor its model's child process).
    workflow = (
        None
        if settings.role == "serve"
        else _workflow(life, settings, store=store, saga_log=saga_log, budget=budget, upstreams=upstreams)
    )
    executor = None if workflow is None else _executor(life, settings, workflow)
    cancellations = Cancellations(store)
    commands = RunCommands(
        store=store, executor=executor, settings=settings, cancellations=cancellations, unstarted=unstarted
    )
    servicer = AgentServicer(store=store, sagas=saga_log, projection=projection, commands=commands)

    async def resume_orphaned_runs() -> None:
        # Sagas whose owner died (its lease expired) are taken over here, not only at start-up.
        # With role "execute", runs no saga was begun for are claimed as they come instead.
        assert workflow is not None and executor is not None
        idle_after_s = settings.saga_lease_s if settings.role == "all" else 0.0
        while True:
            await asyncio.sleep(settings.saga_lease_s)
            for run_id in await workflow.recover(include_unstarted=False, unstarted_after_s=idle_after_s):
                executor.resume(run_id)

    async def prune_ledger_hourly() -> None:
        while True:
            await projection.prune_ledger(older_than=settings.dedup_retention_s)
            await asyncio.sleep(3600)

    async def start_background(port: int) -> None:
        # Started after the executor and the bus were opened, so stopped before they close.
        life.supervise("commit announcements", store.announce_commits)
        life.supervise("cancel announcements", cancellations.announce)
        if settings.role != "serve":
            # A serve replica leaves the log's consumers to the executors (any replica's relay
            # publishes any row; the read model has one follower at a time), so its loop only serves.
            await projection.catch_up(store)
            life.supervise("outbox relay", lambda: outbox.relay(bus, poll_interval=settings.outbox_poll_s))
            # The read model follows the log's feed, woken by commits (the only way it is fed).
            life.supervise("projection", lambda: projection.follow(store, interval_s=settings.outbox_poll_s))
            life.supervise("ledger pruning", prune_ledger_hourly)
        if unstarted is not None:
            life.supervise("admission announcements", unstarted.announce)
        if workflow is None or executor is None:
            return
        life.supervise(
            "cancels of runs executing here",
            functools.partial(cancellations.follow, executor, poll_s=settings.claim_poll_s),
        )
        life.supervise("orphaned run takeover", resume_orphaned_runs)
        # Runs a previous process accepted but did not finish: resume or compensate them (with
        # role "execute" only sagas already begun; unstarted runs are claimed below).
        for run_id in await workflow.recover(include_unstarted=unstarted is None):
            executor.resume(run_id)
        if unstarted is not None:
            claiming = functools.partial(unstarted.feed, executor, poll_s=settings.claim_poll_s)
            life.supervise("run claiming", claiming)

    life.on_started(start_background)
    return service.plan(
        [
            ServiceBinding(
                SERVICE_NAME, lambda s: agent_service_pb2_grpc.add_AgentServiceServicer_to_server(servicer, s)
            ),
            a2a_binding(
                life,
                store=store,
                commands=commands,
                projection=projection,
                bus=bus,
                instance=instance,
                settings=settings,
            ),
        ]
    )
