"""One service on one port from N processes (``AGENTMESH_<SVC>_PROCESSES=N``), for more cores.

A grpc.aio server runs Python on one core; past that, more processes are the way to more cores.
As grpc's ``examples/python/multiprocessing`` does: the parent reserves the port with
``SO_REUSEPORT``, forks the workers before any gRPC object exists (grpc's core state does not
survive a fork), and each worker serves the same port with ``grpc.so_reuseport`` on, so the kernel
spreads incoming connections across them.

The workers behave as one instance:

* the parent forwards SIGTERM/SIGINT to every worker, each drains as a single server does
  (health NOT_SERVING, new calls refused, in-flight calls finished) and the parent exits 0 once
  all of them did;
* a worker that exits on its own (a crash) stops the others and the parent exits 1: a supervisor
  (systemd, Kubernetes) restarts the whole instance rather than it serving at partial capacity;
  a parent that dies, even by SIGKILL, takes its workers with it (each drains on the SIGTERM the
  kernel sends it, ``PR_SET_PDEATHSIG``);
* registration with discovery happens once, from worker 0 (:func:`is_primary`); health answers
  the same from every worker;
* worker ``i`` serves metrics on ``METRICS_PORT + i`` (each process has its own counters) and
  logs with ``worker=i``.

This is not the agent's ``WORKERS`` (run-execution slots inside one process): ``PROCESSES``
multiplies whole servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict, TypeVar

import structlog

from runtime.config import ServiceSettings
from runtime.tied_exec import die_with

log = structlog.get_logger(__name__)

_S = TypeVar("_S", bound=ServiceSettings)


@dataclass(frozen=True, slots=True)
class Worker:
    index: int
    count: int


_current = Worker(0, 1)
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def current_worker() -> Worker:
    """This process's place among the service's processes (``Worker(0, 1)`` when it serves alone)."""
    return _current


def is_primary() -> bool:
    """True in the one process that speaks for the instance (registration with discovery)."""
    return _current.index == 0


@contextlib.contextmanager
def reserved_port(host: str, port: int) -> Iterator[int]:
    """Bind (without listening) ``host:port`` with SO_REUSEPORT, so port 0 picks one port for all."""
    family = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM)[0][0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        yield int(sock.getsockname()[1])


def worker_settings(settings: _S, worker: Worker, port: int) -> _S:
    """The settings worker ``worker`` serves with: the shared port, its own metrics port."""
    update: dict[str, object] = {"port": port}
    if settings.metrics_port:
        update["metrics_port"] = settings.metrics_port + worker.index
    return settings.model_copy(update=update)


def run_processes(settings: _S, serve: Callable[[_S], int]) -> int:
    """Fork ``settings.processes`` workers each running ``serve(their settings)``; supervise them.

    Must be called before any gRPC channel or server exists in this process. Returns the exit code.
    """
    global _current  # noqa: PLW0603  # set once per forked worker, before it serves
    count = settings.processes
    parent = os.getpid()
    with reserved_port(settings.host, settings.port) as port:
        children: dict[int, int] = {}
        # Blocked while forking: a SIGTERM now waits until each process has its handlers (the
        # workers' bootstrap and _supervise unblock them) instead of killing it half-started.
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        for index in range(count):
            pid = os.fork()
            if pid == 0:  # the worker
                code = 1
                try:
                    die_with(parent, signal.SIGTERM)
                    _current = Worker(index, count)
                    structlog.contextvars.bind_contextvars(worker=index)
                    code = serve(worker_settings(settings, _current, port))
                except BaseException:
                    log.exception("worker failed", worker=index)
                finally:
                    os._exit(code)
            children[pid] = index
        log.info("serving from processes", port=port, processes=count, pids=sorted(children))
        return _supervise(children)


class TiedChild(TypedDict):
    """:class:`subprocess.Popen` arguments from :func:`tied_child` (``Popen(**tied_child(...), ...)``)."""

    args: list[str]
    start_new_session: bool


_TIED_EXEC = Path(__file__).with_name("tied_exec.py")


def tied_child(command: Sequence[str], signum: int = signal.SIGTERM, *, user: str | None = None) -> TiedChild:
    """``command`` as a long-lived child this process starts and must never leave behind.

    The child gets its own session (a Ctrl-C at the terminal reaches this process only, which then
    stops its children in order) and ``signum`` from the kernel when this process dies, however it
    dies (SIGKILL, an OOM kill): ``PR_SET_PDEATHSIG``, asked for by ``runtime/tied_exec.py``
    before it execs ``command`` (as ``user``, if given). Nothing runs between fork and exec in
    this process, so ``subprocess`` can vfork: see that file for why that matters with grpc.

    Linux sends the signal when the *thread* that started the child dies: start children from the
    main thread (an asyncio loop's thread is), never from ``asyncio.to_thread``. The setting
    survives ``exec``, not a fork of the child's own: a program that daemonizes (``pg_ctl
    start``) must be run in the foreground instead. On a loop, :func:`start_tied` does the same.
    """
    program = shutil.which(command[0])
    if program is None:  # said here, as Popen would, not by the helper once it has started
        raise FileNotFoundError(errno.ENOENT, "no such program", command[0])
    helper = [sys.executable, "-I", "-S", str(_TIED_EXEC), str(os.getpid()), str(int(signum)), user or "-"]
    return {"args": [*helper, program, *command[1:]], "start_new_session": True}


async def start_tied(
    command: Sequence[str], signum: int = signal.SIGTERM, **options: Any
) -> asyncio.subprocess.Process:
    """:func:`tied_child` for ``asyncio.create_subprocess_exec``; ``options`` are its (stdout, env, cwd...)."""
    tied = tied_child(command, signum)
    return await asyncio.create_subprocess_exec(*tied["args"], start_new_session=tied["start_new_session"], **options)


async def stop_child(process: subprocess.Popen[Any] | asyncio.subprocess.Process, *, within_s: float) -> None:
    """SIGTERM a child :func:`tied_child` started, SIGKILL it if it has not exited ``within_s``
    later; returns once it has exited and been reaped (no zombie left)."""
    if isinstance(process, subprocess.Popen):
        process.poll()
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):  # it exited just now
        process.terminate()
    try:
        async with asyncio.timeout(within_s):
            await _exited(process)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await _exited(process)


async def _exited(process: subprocess.Popen[Any] | asyncio.subprocess.Process) -> None:
    if isinstance(process, subprocess.Popen):
        await asyncio.to_thread(process.wait)
    else:
        await process.wait()


def _supervise(children: dict[int, int]) -> int:
    stopping = False
    failed = False

    def stop_all(signum: int = signal.SIGTERM, _frame: object = None) -> None:
        nonlocal stopping
        stopping = True
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    for sig in _STOP_SIGNALS:
        signal.signal(sig, stop_all)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    while children:
        pid, status = os.wait()
        index = children.pop(pid, None)
        if index is None:
            continue
        code = os.waitstatus_to_exitcode(status)
        if not stopping:
            log.error("worker exited on its own; stopping the others", worker=index, pid=pid, exit_code=code)
            failed = True
            stop_all()
        elif code != 0:
            log.error("worker did not drain cleanly", worker=index, pid=pid, exit_code=code)
            failed = True
    return 1 if failed else 0
