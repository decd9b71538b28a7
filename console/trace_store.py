"""Recent traces in memory: a bounded ring, oldest trace dropped first.

The console keeps only what an operator looks at in the minutes after a call (Jaeger's
in-memory storage does the same for its all-in-one image): at most ``max_traces`` traces of
at most ``max_spans_per_trace`` spans each, with attribute values cut to ``max_value_chars``,
so memory stays bounded whatever the services send. Anything longer-lived belongs in a real
tracing backend (point the services' ``OTLP_ENDPOINT`` at Jaeger or Tempo instead).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bounded.lru import LRUCache

# OTLP status codes (opentelemetry.proto.trace.v1.Status.StatusCode).
STATUS_UNSET, STATUS_OK, STATUS_ERROR = 0, 1, 2
SPAN_KINDS = ("UNSPECIFIED", "INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER")


@dataclass(frozen=True, slots=True)
class Span:
    trace_id: str  # 32 lowercase hex digits
    span_id: str  # 16 lowercase hex digits
    parent_span_id: str  # "" for a root span
    service: str
    name: str
    kind: str
    start_ns: int
    end_ns: int
    status_code: int
    status_message: str
    attributes: Mapping[str, Any]

    @property
    def duration_ns(self) -> int:
        return max(0, self.end_ns - self.start_ns)

    @property
    def failed(self) -> bool:
        """An error status, or a non-OK gRPC code (server spans of refused calls keep status UNSET)."""
        code = self.attributes.get("rpc.grpc.status_code", 0)
        return self.status_code == STATUS_ERROR or (isinstance(code, int) and code != 0)

    def to_json(self) -> dict[str, Any]:
        return {
            "trace_id": self.trace_id,
            "span_id": self.span_id,
            "parent_span_id": self.parent_span_id,
            "service": self.service,
            "name": self.name,
            "kind": self.kind,
            "start_ns": self.start_ns,
            "end_ns": self.end_ns,
            "duration_ms": self.duration_ns / 1e6,
            "error": self.failed,
            "status_message": self.status_message,
            "attributes": dict(self.attributes),
        }


@dataclass(slots=True)
class Trace:
    trace_id: str
    spans: list[Span] = field(default_factory=list)
    dropped_spans: int = 0

    @property
    def root(self) -> Span:
        """The span without a parent in this trace (else the earliest): what the list shows."""
        ids = {s.span_id for s in self.spans}
        roots = [s for s in self.spans if not s.parent_span_id or s.parent_span_id not in ids]
        return min(roots or self.spans, key=lambda s: s.start_ns)

    @property
    def start_ns(self) -> int:
        return min(s.start_ns for s in self.spans)

    @property
    def duration_ns(self) -> int:
        return max(s.end_ns for s in self.spans) - self.start_ns

    @property
    def error(self) -> bool:
        return any(s.failed for s in self.spans)

    def summary(self) -> dict[str, Any]:
        root = self.root
        return {
            "trace_id": self.trace_id,
            "service": root.service,
            "method": root.name,
            "start_ns": self.start_ns,
            "duration_ms": self.duration_ns / 1e6,
            "error": self.error,
            "status": _grpc_status(root),
            "spans": len(self.spans),
            "services": sorted({s.service for s in self.spans}),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            **self.summary(),
            "dropped_spans": self.dropped_spans,
            "span_list": [s.to_json() for s in sorted(self.spans, key=lambda s: s.start_ns)],
        }


def _grpc_status(span: Span) -> str:
    code = span.attributes.get("rpc.grpc.status_code")
    if isinstance(code, int):
        return _GRPC_CODE_NAMES.get(code, str(code))
    return "ERROR" if span.status_code == STATUS_ERROR else "OK"


_GRPC_CODE_NAMES = {
    0: "OK", 1: "CANCELLED", 2: "UNKNOWN", 3: "INVALID_ARGUMENT", 4: "DEADLINE_EXCEEDED", 5: "NOT_FOUND",
    6: "ALREADY_EXISTS", 7: "PERMISSION_DENIED", 8: "RESOURCE_EXHAUSTED", 9: "FAILED_PRECONDITION",
    10: "ABORTED", 11: "OUT_OF_RANGE", 12: "UNIMPLEMENTED", 13: "INTERNAL", 14: "UNAVAILABLE",
    15: "DATA_LOSS", 16: "UNAUTHENTICATED",
}  # fmt: skip


class TraceStore:
    """The ring of recent traces: a trace seen again moves to the newest end, the oldest fall off."""

    def __init__(self, *, max_traces: int, max_spans_per_trace: int) -> None:
        if max_traces < 1 or max_spans_per_trace < 1:
            raise ValueError("the trace ring needs room for at least one trace of one span")
        self.max_traces = max_traces
        self.max_spans_per_trace = max_spans_per_trace
        self._traces: LRUCache[str, Trace] = LRUCache(max_traces)

    def add(self, spans: list[Span]) -> None:
        """Store spans; a trace seen again moves to the newest end, the oldest traces fall off."""
        for span in spans:
            trace = self._traces.get(span.trace_id)
            if trace is None:
                trace = self._traces[span.trace_id] = Trace(span.trace_id)
            if len(trace.spans) < self.max_spans_per_trace:
                trace.spans.append(span)
            else:
                trace.dropped_spans += 1

    def __len__(self) -> int:
        return len(self._traces)

    def get(self, trace_id: str) -> Trace | None:
        return self._traces.peek(trace_id.lower())

    def recent(self, *, limit: int = 50, service: str = "", errors_only: bool = False) -> list[Trace]:
        """Newest first, optionally only traces touching ``service`` or only failed ones."""
        found: list[Trace] = []
        for trace in self._traces.values(newest_first=True):
            if service and all(s.service != service for s in trace.spans):
                continue
            if errors_only and not trace.error:
                continue
            found.append(trace)
            if len(found) >= limit:
                break
        return found

    def spans(self) -> list[Span]:
        return [span for trace in self._traces.values() for span in trace.spans]
