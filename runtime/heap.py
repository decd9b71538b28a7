"""Keep what a service process imported out of the garbage collector's full passes.

CPython's cyclic collector walks every tracked object on a full (generation 2) collection, with
the GIL held: every thread stops, the event loop included, and every call in flight waits. A
service's imports (grpc, SQLAlchemy, protobuf, OpenTelemetry, and in the agent the engine's
libraries) are hundreds of thousands of objects that live as long as the process; measured in the
agent under the write-path benchmark's load (bench.write_path, docs/benchmarks.md) with the sentence
model still loaded in the agent's own process, full collections took 150-280 ms, two of them inside
a 17 s load. ``gc.freeze()`` moves every object alive now to a permanent generation that collections
skip; objects made later are collected as before, and full passes walk only them.

What is frozen is never collected as a cycle again, so this runs once, in a service's own process
(``runtime.bootstrap.serve_service``, after its imports), never in a test process that builds servers
again and again.
"""

from __future__ import annotations

import gc
import time

import structlog

log = structlog.get_logger(__name__)


def freeze_long_lived(after: str) -> None:
    """Collect what is garbage now, then leave every live object out of later collections.

    ``after`` says what was just built (for the log line). Takes one full collection's time, once.
    """
    began = time.perf_counter()
    gc.collect()
    gc.freeze()
    log.info(
        "long-lived objects left out of garbage collection",
        after=after,
        objects=gc.get_freeze_count(),
        pause_ms=round((time.perf_counter() - began) * 1000, 1),
    )
