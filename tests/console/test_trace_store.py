"""The trace ring stays bounded however much is sent: oldest traces go first, long traces are capped."""

from __future__ import annotations

import pytest

from console.trace_store import STATUS_ERROR, STATUS_OK, Span, TraceStore


def span(
    trace: int, n: int, *, parent: int | None = None, service: str = "agentmesh-gateway", status: int = STATUS_OK
) -> Span:
    return Span(
        trace_id=f"{trace:032x}",
        span_id=f"{n:016x}",
        parent_span_id="" if parent is None else f"{parent:016x}",
        service=service,
        name="/agentmesh.agent.v1.AgentService/CreateRun",
        kind="SERVER",
        start_ns=1_000 * n,
        end_ns=1_000 * n + 500,
        status_code=status,
        status_message="",
        attributes={},
    )


def test_the_oldest_trace_is_dropped_when_the_ring_is_full() -> None:
    store = TraceStore(max_traces=3, max_spans_per_trace=10)
    for trace in range(1, 6):
        store.add([span(trace, 1)])
    assert len(store) == 3
    assert store.get(f"{1:032x}") is None and store.get(f"{2:032x}") is None
    assert [t.trace_id for t in store.recent()] == [f"{t:032x}" for t in (5, 4, 3)]


def test_a_trace_receiving_spans_again_counts_as_recent() -> None:
    store = TraceStore(max_traces=2, max_spans_per_trace=10)
    store.add([span(1, 1)])
    store.add([span(2, 1)])
    store.add([span(1, 2, parent=1, service="agentmesh-agent")])  # a late span of trace 1
    store.add([span(3, 1)])
    assert store.get(f"{1:032x}") is not None
    assert store.get(f"{2:032x}") is None


def test_spans_beyond_the_per_trace_cap_are_counted_not_kept() -> None:
    store = TraceStore(max_traces=5, max_spans_per_trace=4)
    store.add([span(7, n, parent=1 if n > 1 else None) for n in range(1, 11)])
    trace = store.get(f"{7:032x}")
    assert trace is not None
    assert len(trace.spans) == 4
    assert trace.dropped_spans == 6
    assert len(store.spans()) == 4


def test_a_trace_summary_names_its_root_and_whether_any_span_failed() -> None:
    store = TraceStore(max_traces=5, max_spans_per_trace=10)
    store.add([
        span(9, 2, parent=1, service="agentmesh-agent", status=STATUS_ERROR),
        span(9, 1),
        span(9, 3, parent=2, service="agentmesh-rag"),
    ])  # fmt: skip
    summary = store.get(f"{9:032x}").summary()  # type: ignore[union-attr]
    assert summary["service"] == "agentmesh-gateway"
    assert summary["error"] is True
    assert summary["services"] == ["agentmesh-agent", "agentmesh-gateway", "agentmesh-rag"]
    assert [t.trace_id for t in store.recent(service="agentmesh-rag")] == [f"{9:032x}"]
    assert store.recent(service="agentmesh-other") == []


def test_a_ring_without_room_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one trace"):
        TraceStore(max_traces=0, max_spans_per_trace=1)
