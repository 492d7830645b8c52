"""Calling the user's code (loader scripts, metrics) without letting it end the process.

``sys.exit`` inside user code is a ``SystemExit`` the callers turn into a CalibkitError. A hard
``os._exit`` would end calibkit on the spot, exit status chosen by the user's code (0 reads as
success) and nothing published or cleaned up. While :func:`no_hard_exit` is active in a thread,
``os._exit`` called from that thread raises :class:`HardExit` instead; other threads (and
processes started meanwhile with spawn/forkserver) keep the real one. Code that bound
``os._exit`` to another name before the call is out of reach.
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


def _exit(code) -> None:
    if threading.get_ident() in _owners:
        raise HardExit(code)
    _REAL_EXIT(code)


@contextlib.contextmanager
def no_hard_exit():
    me = threading.get_ident()
    with _lock:
        _owners[me] = _owners.get(me, 0) + 1
        os._exit = _exit
    try:
        yield
    finally:
        with _lock:
            _owners[me] -= 1
            if not _owners[me]:
                del _owners[me]
            if not _owners:
                os._exit = _REAL_EXIT
