"""Structured logs: one JSON object per line (or a readable console form), via structlog.

Everything logs through the standard `logging` module too (grpc, libraries), rendered by the
same processors, so a log pipeline sees one format. Every line written during a call carries the
call's trace and span ids (`add_trace_context`), so one call's lines can be found together.

Our own lines (structlog loggers) skip the `logging` machinery: they are rendered by structlog
and written straight to stderr. Each call writes an access line, and the stdlib detour (a
LogRecord, handler locks, a second pass of processors) cost about 2.5 times as much per line.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any, Literal, TextIO

import structlog

from interceptors.access_log import AccessLogWriter
from interceptors.tracing import add_trace_context

# Set by configure_logging for JSON logs: the access log renders its lines itself and writes
# them in batches (interceptors/access_log.py). None (console logs, tests): through structlog.
_access_writer: AccessLogWriter | None = None


def access_log_writer() -> AccessLogWriter | None:
    """Where the access log writes when logging was configured for JSON lines; None: structlog."""
    return _access_writer


class _StderrLogger:
    """A structlog logger that writes each rendered line to one stream; named for `add_logger_name`."""

    __slots__ = ("_lock", "_stream", "name")

    def __init__(self, name: str, stream: TextIO, lock: threading.Lock) -> None:
        self.name = name
        self._stream = stream
        self._lock = lock

    def msg(self, message: str) -> None:
        with self._lock:
            self._stream.write(message + "\n")
            self._stream.flush()

    log = debug = info = warn = warning = err = error = critical = exception = fatal = msg


class _StderrLoggerFactory:
    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def __call__(self, *args: Any) -> _StderrLogger:
        return _StderrLogger(str(args[0]) if args else "", self._stream, self._lock)


def configure_logging(*, level: str = "INFO", fmt: Literal["json", "console"] = "json") -> None:
    global _access_writer  # noqa: PLW0603 - logging is process-wide, like structlog.configure
    if _access_writer is not None:
        _access_writer.flush()
    _access_writer = AccessLogWriter(sys.stderr, level=logging.getLevelNamesMapping()[level]) if fmt == "json" else None
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        add_trace_context,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        logger_factory=_StderrLoggerFactory(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level]),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
