"""``python tied_exec.py PARENT SIGNUM USER COMMAND...``: become COMMAND, sent SIGNUM when PARENT dies.

:func:`runtime.processes.tied_child` starts each long-lived child through this file. Asking for
the signal (``prctl(PR_SET_PDEATHSIG)``) in ``Popen``'s ``preexec_fn`` instead would make
``subprocess`` fork() rather than vfork(), and fork() runs grpc's fork handlers in a parent
that holds channels: they restart its pollers under calls in flight (``epoll_wait error: Bad
file descriptor``), now and then abort the child before it execs, and once froze a launcher
outright (the likely cause of a launcher that froze once where it started a child). Asked for
here, after a plain vfork and exec, no fork handler runs anywhere.

Run by path with ``python -I -S``: only the standard library is imported, in milliseconds. USER
(``-`` for none) is who COMMAND runs as: the switch is made here, before the signal is asked
for, because the kernel clears that request when a process's credentials change.
"""

from __future__ import annotations

import ctypes
import os
import pwd
import signal
import sys

PR_SET_PDEATHSIG = 1  # linux/prctl.h
# Resolved at import: a forked worker (runtime/processes.py) must not dlopen, since another thread
# of its parent may have held the loader's lock at the fork.
_prctl = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None)  # Linux only


def die_with(parent: int, signum: int) -> None:
    """Have the kernel send this process ``signum`` when ``parent`` dies; end now if it already has."""
    if _prctl is not None and _prctl(PR_SET_PDEATHSIG, signum) != 0:
        print(f"process {os.getpid()} cannot follow its parent: errno {ctypes.get_errno()}", file=sys.stderr)
    if os.getppid() != parent:  # the parent died before the request took effect
        signal.signal(signum, signal.SIG_DFL)  # SIGINT too ends the process, with no traceback
        os.kill(os.getpid(), signum)


def become(user: str) -> None:
    """Run as ``user``, with its group and no supplementary groups (as ``Popen(user=...)`` would)."""
    entry = pwd.getpwnam(user)
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)


def main(argv: list[str]) -> None:
    parent, signum, user, command = int(argv[0]), int(argv[1]), argv[2], argv[3:]
    if user != "-":
        become(user)
    die_with(parent, signum)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
