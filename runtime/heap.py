"""Keep a process's long-lived heap (its imports, a loaded model) out of the garbage collector's full passes.

CPython's cyclic collector walks every tracked object on a full (generation 2) collection, with
the GIL held: every thread stops, the event loop included. A service that imported grpc, SQLAlchemy
and torch and built a sentence model holds a few hundred thousand objects that live as long as the
process, so each full collection cost it up to 450 ms; in the agent under the write-path benchmark's
load two of them fell inside 17 s, and every call in flight waited that long (bench.write_path,
docs/benchmarks.md). ``gc.freeze()`` moves every object alive now to a permanent generation that
collections skip; objects made later are collected as before, and full passes then walk only them.

What is frozen is never collected as a cycle again, so this runs only in a service's own process
(``runtime.bootstrap.run_service``, after its imports: never in a test process that builds servers
again and again) and only where what exists is meant to last: after the imports, and after a model
is loaded (what is in flight at that moment stays, a bounded one-off).
"""

from __future__ import annotations

import gc
import time

import structlog

log = structlog.get_logger(__name__)

# Set by a service's entry point: later freezes (a model loaded) apply to this process too.
_service_process = False


def freeze_service_process(after: str) -> None:
    """At a service process's start: freeze what ``after`` built, and let later :func:`freeze_again` calls freeze."""
    global _service_process  # noqa: PLW0603 - one flag per process, set once by its entry point
    _service_process = True
    freeze_long_lived(after)


def freeze_again(after: str) -> None:
    """In a service's process, freeze what ``after`` built too (a loaded model); elsewhere nothing."""
    if _service_process:
        freeze_long_lived(after)


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
