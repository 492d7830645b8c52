"""Worker processes die with the process that started them (no orphans after ``kill -9``).

Linux: ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` in the worker, then a check that the parent is
still the one that started it: a parent killed while the worker was still importing (spawn
start-up takes seconds) has already gone, and the death signal would never come. Elsewhere
only the check runs. Workers ignore SIGINT: Ctrl-C reaches the parent, which shuts the pool down.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading

PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int | None) -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)  # the parent died while this worker started: nothing will read its results


def init_worker(parent_pid: int | None, then=None, *args) -> None:
    """ProcessPoolExecutor initializer: ``initializer=init_worker, initargs=(os.getpid(), fn, *args)``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(parent_pid)
    if then is not None:
        then(*args)


@contextlib.contextmanager
def spawning():
    """Around a pool's submit (which spawns its workers): SIGINT is blocked in this thread, so a
    worker starts with it blocked (the mask survives fork and exec) and a Ctrl-C to the process
    group cannot interrupt its imports with a traceback; this process still gets it (another
    thread takes it, or it is delivered on leaving)."""
    with _deferred_handlers():
        block = getattr(signal, "pthread_sigmask", None)
        if block is None:
            yield
            return
        old = block(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            yield
        finally:
            block(signal.SIG_SETMASK, old)


@contextlib.contextmanager
def _deferred_handlers():
    """The Python handlers of SIGINT/SIGTERM/SIGHUP record a signal instead of raising while a
    worker is spawned, and the first one recorded is raised on leaving. Python runs its handlers
    in the main thread whichever thread the signal reached, so blocking a thread is not enough: a
    SIGTERM raised mid-spawn cut the pickled start-up data a worker was reading, and the worker
    printed multiprocessing's traceback (``pickle data was truncated``; attack 5)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []
    previous = {}
    for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if s is not None and callable(signal.getsignal(s)):
            previous[s] = signal.signal(s, lambda signum, frame: got.append(signum))
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        if got:
            previous[got[0]](got[0], None)  # the run's own handler: raises its interrupt now


def quiet_cancelled_results() -> None:
    """ProcessPoolExecutor's manager thread may set the result of a future an abort just
    cancelled (``InvalidStateError: CANCELLED``): after an abort that is expected noise, not a
    failure to show the user. Other thread exceptions still print."""
    from concurrent.futures import InvalidStateError

    previous = threading.excepthook
    if getattr(previous, "_calibkit_quiet", False):
        return

    def hook(args) -> None:
        if not issubclass(args.exc_type, InvalidStateError):
            previous(args)

    hook._calibkit_quiet = True
    threading.excepthook = hook
