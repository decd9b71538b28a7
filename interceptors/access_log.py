"""One structured log line per call: method, code, duration, peer, caller.

The line is written when the call has really ended (an ``Observe`` step of the server layer),
so it carries the status the client got, including aborts, cancellations and deadlines.
Levels follow go-grpc-middleware: client mistakes at info, conditions worth a look at
warning, server faults at error. Health checks and reflection are not logged (a checker calls
every few seconds; metrics still count them): the concern's matcher leaves them out.

Two ways to write the line:

* through structlog (``logger``), like every other line: the trace id comes from the logging
  pipeline (``interceptors.tracing.add_trace_context``). What the tests and the console
  format use;
* through an :class:`AccessLogWriter`, for JSON logs in production: a line was the dearest
  part of the chain (about a quarter of a bare call's CPU, measured by ``make bench``), so the
  writer renders the same JSON object itself: the method's fields encoded once when the chain
  is compiled, one C-accelerated string escape per variable field, the timestamp's seconds
  formatted once per second, and lines written in batches (at most ``max_lines`` or
  ``flush_after_s`` late, and all of them when the service stops).

``ok_every=N`` writes one in N successful lines per method (counted, not random, so a method
still shows up); lines of failed calls are always written.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from datetime import UTC, datetime
from json.encoder import encode_basestring
from typing import Any, TextIO

import grpc
import grpc.aio
import structlog

from interceptors._typing import Context
from interceptors.identity import current_caller
from interceptors.layer import Concern, MethodInfo, Observe
from interceptors.outcome import Outcome
from interceptors.selector import NOT_PROBES, Matcher
from interceptors.tracing import current_ids

_S = grpc.StatusCode
LEVELS: dict[grpc.StatusCode, int] = {
    **{code: logging.INFO for code in _S},
    **{
        code: logging.WARNING
        for code in (
            _S.DEADLINE_EXCEEDED,
            _S.PERMISSION_DENIED,
            _S.RESOURCE_EXHAUSTED,
            _S.FAILED_PRECONDITION,
            _S.ABORTED,
            _S.OUT_OF_RANGE,
            _S.UNAVAILABLE,
        )
    },
    **{code: logging.ERROR for code in (_S.UNKNOWN, _S.UNIMPLEMENTED, _S.INTERNAL, _S.DATA_LOSS)},
}

LOGGER_NAME = "agentmesh.access"
_DIGITS = tuple(f"{n:03d}" for n in range(1000))
EVENT = "rpc finished"


class AccessLogWriter:
    """Writes rendered access lines to ``stream`` in batches; ``level`` is the lowest written."""

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        level: int = logging.INFO,
        max_lines: int = 64,
        flush_after_s: float = 0.2,
    ) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self.level = level
        self._max_lines = max_lines
        self._flush_after_s = flush_after_s
        self._lines: list[str] = []
        self._timer: asyncio.TimerHandle | None = None
        self._second = -1
        self._second_text = ""

    def timestamp(self, now_ns: int) -> str:
        """``now_ns`` (``time.time_ns()``) as structlog's ISO UTC stamp (``2026-12-01T07:41:12.123456Z``)."""
        second, ns = divmod(now_ns, 1_000_000_000)
        if second != self._second:
            self._second = second
            self._second_text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        # Integers and a table of three-digit strings: half what formatting a float costs per line.
        micros = ns // 1000
        return f"{self._second_text}.{_DIGITS[micros // 1000]}{_DIGITS[micros % 1000]}Z"

    def write(self, line: str) -> None:
        lines = self._lines
        lines.append(line)
        if len(lines) >= self._max_lines:
            self.flush()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()  # no loop to flush later from
                return
            self._timer = loop.call_later(self._flush_after_s, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._lines:
            text = "".join(self._lines)
            self._lines.clear()
            self._stream.write(text)
            self._stream.flush()

    def close(self) -> None:
        self.flush()


class AccessLogInterceptor(Concern):
    """Log each finished call once, at a level chosen by its status code."""

    def __init__(
        self,
        *,
        logger: Any | None = None,
        levels: dict[grpc.StatusCode, int] | None = None,
        select: Matcher = NOT_PROBES,
        writer: AccessLogWriter | None = None,
        ok_every: int = 1,
    ) -> None:
        if ok_every < 1:
            raise ValueError("ok_every must be >= 1 (1 writes every successful call's line)")
        self._log = logger if logger is not None else structlog.get_logger(LOGGER_NAME)
        self._levels = LEVELS if levels is None else {**LEVELS, **levels}
        self._writer = writer
        self._ok_every = ok_every
        self.select = select

    def compile(self, info: MethodInfo) -> Observe:
        done = self._written(info) if self._writer is not None else self._logged(info)
        if self._ok_every == 1:
            return Observe(done)
        every, skipped = self._ok_every, [0]

        def sampled(context: Context, outcome: Outcome, started: float) -> None:
            if outcome.code is _S.OK:
                skipped[0] += 1
                if skipped[0] < every:
                    return
                skipped[0] = 0
            done(context, outcome, started)

        return Observe(sampled)

    def _logged(self, info: MethodInfo) -> Any:
        log = self._log.bind(method=info.name)
        levels = self._levels

        def done(context: Context, outcome: Outcome, started: float) -> None:
            log.log(
                levels[outcome.code],
                EVENT,
                code=outcome.code.name,
                duration_ms=round((time.perf_counter() - started) * 1000, 3),
                peer=_peer(context, outcome),
                caller=current_caller.get().subject,
            )

        return done

    def _written(self, info: MethodInfo) -> Any:
        writer = self._writer
        assert writer is not None
        head = f'{{"method": {encode_basestring(info.name)}, "code": "'
        # Per code (by identity: an Enum hashes in Python), the code's text and the rest of the
        # line after the variable fields; None below the writer's level.
        parts: dict[int, tuple[str, str] | None] = {
            id(code): None
            if self._levels[code] < writer.level
            else (
                f'{head}{code.name}", "duration_ms": ',
                f'"event": "{EVENT}", "level": "{logging.getLevelName(self._levels[code]).lower()}", '
                f'"logger": "{LOGGER_NAME}", "timestamp": "',
            )
            for code in _S
        }
        encoded = _Encoded()
        known = encoded.known  # looked up inline: a method call per field costs more than the lookup
        clock, wall = time.perf_counter, time.time_ns

        def done(context: Context, outcome: Outcome, started: float) -> None:
            line = parts[id(outcome.code)]
            if line is None:
                return
            start, tail = line
            peer_text = _peer(context, outcome)
            peer = known.get(peer_text) or encoded(peer_text)
            subject = current_caller.get().subject
            caller = known.get(subject) or encoded(subject)
            ids = current_ids()
            trace = "" if ids is None else f'"trace_id": "{ids[0]}", "span_id": "{ids[1]}", '
            writer.write(
                f'{start}{(clock() - started) * 1000:.3f}, "peer": {peer}, "caller": {caller}, '
                f'{trace}{tail}{writer.timestamp(wall())}"}}\n'
            )

        return done


class _Encoded:
    """JSON string literals of the few peers and callers a server sees, escaped once each."""

    __slots__ = ("known",)

    def __init__(self) -> None:
        self.known: dict[str, str] = {}

    def __call__(self, text: str) -> str:
        known = self.known.get(text)
        if known is None:
            if len(self.known) >= 4096:
                self.known.clear()  # bounded: peers come and go with their connections
            known = self.known[text] = encode_basestring(text)
        return known


def _peer(context: Context, outcome: Outcome) -> str:
    # A call torn down by cancellation (the client went away, the deadline passed) may
    # already be freed in grpc core; context.peer() on it segfaults the process.
    if isinstance(outcome.error, (asyncio.CancelledError, GeneratorExit)):
        return ""
    return context.peer()
