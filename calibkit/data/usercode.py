"""Calling the user's code (loader scripts, metrics) without letting it end the process.

``sys.exit`` inside user code is a ``SystemExit`` the callers turn into a CalibkitError. A hard
``os._exit`` would end calibkit on the spot, exit status chosen by the user's code (0 reads as
success) and nothing published or cleaned up. While :func:`no_hard_exit` is active in a thread,
``os._exit`` called from that thread raises :class:`HardExit` instead; other threads, processes
started meanwhile with spawn/forkserver, and processes the user's code forks keep the real one
(a fork that returns into calibkit instead of exiting is ended there, before it can run the rest
of the command). Code that bound ``os._exit`` to another name before the call is out of reach.
"""

from __future__ import annotations

import contextlib
import os
import threading

_REAL_EXIT = os._exit
_owners: dict[int, int] = {}
_lock = threading.Lock()


class HardExit(BaseException):  # not an Exception: the user's `except Exception` cannot swallow it
    def __init__(self, code) -> None:
        super().__init__(code)
        self.code = code


USER_THREADS: list[threading.Thread] = []  # non-daemon threads the user's code started (the CLI does not wait for them)
USER_PROCESSES: set[int] = set()  # child processes the user's code started (said at the end if still running)


def children() -> set[int]:
    """This process's child processes (Linux: /proc/self/task/*/children; elsewhere none known)."""
    import glob

    out: set[int] = set()
    for f in glob.glob("/proc/self/task/*/children"):
        with contextlib.suppress(OSError, ValueError):
            with open(f) as fh:
                out.update(int(x) for x in fh.read().split())
    return out


def running(pids) -> list[int]:
    """Those of ``pids`` that still run (not exited and waiting to be reaped)."""
    out = []
    for pid in sorted(pids):
        with contextlib.suppress(OSError, IndexError):
            with open(f"/proc/{pid}/stat") as fh:
                if fh.read().rsplit(")", 1)[1].split()[0] != "Z":
                    out.append(pid)
    return out
_PID = [os.getpid()]  # the process whose threads are guarded (a fork of the user's code is not)


def _exit(code) -> None:
    if threading.get_ident() in _owners and os.getpid() == _PID[0]:
        raise HardExit(code)
    _REAL_EXIT(code)


@contextlib.contextmanager
def no_hard_exit(where: str = "user code"):
    """Also puts back ``sys.stdout``/``sys.stderr`` that the user's code closed or replaced
    (calibkit's own messages would fail on them), and says so."""
    import sys

    me = threading.get_ident()
    pid = os.getpid()
    streams = (sys.stdout, sys.stderr)
    before = set(threading.enumerate())
    kids = children()
    with _lock:
        if not _owners:
            _PID[0] = pid
        _owners[me] = _owners.get(me, 0) + 1
        os._exit = _exit
    try:
        yield
    finally:
        if os.getpid() != pid:
            # a process the user's code forked, come back into calibkit: it must not run the rest of
            # the command (publish, clean up the parent's folders); it ends here, as the fork ended
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            _REAL_EXIT(0)
        with _lock:
            _owners[me] -= 1
            if not _owners[me]:
                del _owners[me]
            if not _owners:
                os._exit = _REAL_EXIT
        touched = _restore_streams(streams)
        USER_THREADS.extend(t for t in threading.enumerate() if t not in before and not t.daemon)
        USER_PROCESSES.update(children() - kids)
    if touched:
        from calibkit.errors import CalibkitError

        raise CalibkitError(f"{where}: {touched}; user code must leave calibkit's output streams alone")


def _restore_streams(streams) -> str:
    import io
    import sys

    said = []
    for name, fd, before in (("sys.stdout", 1, streams[0]), ("sys.stderr", 2, streams[1])):
        now = getattr(sys, name.split(".")[1])
        if now is before and not getattr(before, "closed", False):
            continue
        said.append(f"it {'closed' if now is before else 'replaced'} {name}")
        if before is not None and not getattr(before, "closed", True):
            setattr(sys, name.split(".")[1], before)
        else:  # closed: a new writer on the same descriptor
            setattr(sys, name.split(".")[1], io.TextIOWrapper(open(fd, "wb", closefd=False), line_buffering=True))
    return " and ".join(said)
