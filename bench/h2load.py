"""Drive a scenario with `h2load` (Debian `nghttp2-client`): far cheaper than a Python client,
so it shows the server's ceiling.

gRPC over h2load: POST of a length-prefixed protobuf body with `content-type: application/grpc`
and `te: trailers`. h2load only sees HTTP statuses, and a gRPC error is an HTTP 200 with a
`grpc-status` trailer, so correctness is checked from the bytes instead: every successful call
carries exactly `Call.response_frame_bytes` of DATA and a failed one (trailers only) none. To make
that count exact, the measured run is a fixed number of requests (sized from a warm-up run's rate
to last about `duration_s`), so no call is cut off mid-response when the run ends.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.payload import Call, grpc_frame_bytes
from bench.pyclient import percentile

_FINISHED = re.compile(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s")
_REQUESTS = re.compile(
    r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored"
)
_DATA = re.compile(r"traffic: .*?, .*? headers .*?, \S+ \((\d+)\) data")


@dataclass(frozen=True)
class H2loadOptions:
    url: str  # http://127.0.0.1:PORT (https:// for a TLS listener)
    call: Call
    concurrency: int
    warmup_s: float
    duration_s: float
    connections: int = 2
    headers: tuple[tuple[str, str], ...] = ()


def available() -> bool:
    return shutil.which("h2load") is not None


def _argv(options: H2loadOptions, body: Path, *, limit: Sequence[str], log: Path | None) -> list[str]:
    streams = max(1, options.concurrency // options.connections)
    argv = [
        "h2load",
        "--clients",
        str(options.connections),
        "--max-concurrent-streams",
        str(streams),
        "--threads",
        "1",
        "--header",
        "content-type: application/grpc",
        "--header",
        "te: trailers",
        "--data",
        str(body),
        *limit,
    ]
    for name, value in options.headers:
        argv += ["--header", f"{name}: {value}"]
    if log is not None:
        argv += ["--log-file", str(log)]
    return [*argv, options.url.rstrip("/") + options.call.method]


def _parse(output: str) -> dict[str, float]:
    finished = _FINISHED.search(output)
    requests = _REQUESTS.search(output)
    data = _DATA.search(output)
    if not (finished and requests and data):
        raise RuntimeError(f"unexpected h2load output:\n{output}")
    seconds = float(finished.group(1)) / (1000 if finished.group(2) == "ms" else 1)
    return {
        "elapsed_s": seconds,
        "rps": float(finished.group(3)),
        "done": int(requests.group(3)),
        "succeeded": int(requests.group(4)),
        "failed": int(requests.group(5)) + int(requests.group(6)),
        "data_bytes": int(data.group(1)),
    }


def _run(argv: list[str], timeout_s: float) -> dict[str, float]:
    return finish_paced(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), timeout_s)


def start_paced(options: H2loadOptions, body: Path, *, rate: int, seconds: float) -> subprocess.Popen[str]:
    """h2load sending ``rate`` calls/s in all for about ``seconds`` (``--rps`` per connection), in the
    background; a fixed number of requests, so none is cut off mid-response. `finish_paced` reads it."""
    per_connection = max(1, round(rate / options.connections))
    requests = max(1, round(per_connection * options.connections * seconds))
    argv = _argv(options, body, limit=["--requests", str(requests), "--rps", str(per_connection)], log=None)
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish_paced(process: subprocess.Popen[str], timeout_s: float) -> dict[str, float]:
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise
    if process.returncode != 0:
        raise RuntimeError(f"h2load exited with {process.returncode}:\n{stdout}\n{stderr}")
    return _parse(stdout)


def fixed(options: H2loadOptions, body: Path, *, calls: int, timeout_s: float) -> dict[str, float]:
    """Exactly ``calls`` calls, as fast as ``options`` allows (no warm-up, no request log)."""
    return _run(_argv(options, body, limit=["--requests", str(calls)], log=None), timeout_s)


def run(options: H2loadOptions, work_dir: Path, on_measuring: Callable[[], Any]) -> dict[str, Any]:
    """Warm up for `warmup_s`, then call `on_measuring` and make the measured run."""
    body = work_dir / "h2load-body.bin"
    body.write_bytes(grpc_frame_bytes(options.call.request))
    log = work_dir / "h2load-requests.tsv"
    warm = _run(
        _argv(options, body, limit=["--duration", f"{max(1, round(options.warmup_s * 1000))}ms"], log=None),
        options.warmup_s + 30,
    )
    requests = max(options.concurrency * 4, round(warm["rps"] * options.duration_s))
    on_measuring()
    measured = _run(_argv(options, body, limit=["--requests", str(requests)], log=log), options.duration_s * 20 + 30)
    latencies_us = sorted(int(line.split("\t")[2]) for line in log.read_text().splitlines() if line.count("\t") >= 2)
    frame_bytes = options.call.response_frame_bytes
    answered = int(measured["data_bytes"]) // frame_bytes
    errors: dict[str, int] = {}
    not_answered = int(measured["succeeded"] - answered)
    if not_answered > 0:
        errors["NO_RESPONSE_DATA"] = not_answered
    if measured["failed"]:
        errors["HTTP_FAILED"] = int(measured["failed"])
    if measured["data_bytes"] % frame_bytes:
        errors["WRONG_RESPONSE_SIZE"] = 1
    calls = int(measured["done"])
    return {
        "calls": calls,
        "messages": answered * options.call.messages_per_call,
        "elapsed_s": measured["elapsed_s"],
        "rps": calls / measured["elapsed_s"] if measured["elapsed_s"] else 0.0,
        "errors": errors,
        "latency_ms": {
            name: percentile(latencies_us, q) / 1e3 for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))
        },
    }
