"""Interrupts of a calibkit command: handlers that record each signal, recognising an interrupt
that surfaced as another error, and the one message an interrupted run prints."""

from __future__ import annotations

import click


class Terminated(KeyboardInterrupt):
    signum = 15


class HungUp(KeyboardInterrupt):
    signum = 1


RECEIVED: list[int] = []  # signals that reached this process's handlers, in order


def _on_sigint(signum, frame) -> None:
    RECEIVED.append(signum)
    raise KeyboardInterrupt()


def _on_sigterm(signum, frame) -> None:
    RECEIVED.append(signum)
    raise Terminated()


def _on_sighup(signum, frame) -> None:
    RECEIVED.append(signum)
    raise HungUp()


def interrupt_behind(exc: BaseException) -> int | None:
    """The signal number if ``exc`` is an interrupt in disguise, else None.

    A signal whose handler raises while a C extension is being imported or initialised (ONNX
    Runtime's pybind module, numpy's) comes out as that extension's own error, e.g.
    ``ImportError: initialization failed``; it is still the user's interrupt, not a failure.
    """
    seen = exc
    while seen is not None:
        if isinstance(seen, KeyboardInterrupt):
            return getattr(seen, "signum", 2)
        seen = seen.__cause__ or seen.__context__
    return RECEIVED[-1] if RECEIVED else None


def quiet_shutdown_noise() -> None:
    """After an interrupt, a process pool cut off mid-shutdown can have Python's exit handlers
    write to its already closed wake-up pipe (concurrent.futures, CPython < 3.12), printed as
    "Exception ignored in: <module 'threading'> ... OSError: [Errno 9] Bad file descriptor" under
    calibkit's message (attack 5b: 2 of 9 SIGTERMs into calibrate --workers 2). Those closed-pipe
    errors are dropped; anything else still prints."""
    import errno
    import sys

    previous = sys.unraisablehook
    if getattr(previous, "_calibkit_quiet", False):
        return

    def hook(unraisable) -> None:
        exc = unraisable.exc_value
        if isinstance(exc, OSError) and exc.errno in (errno.EBADF, errno.EPIPE):
            return
        previous(unraisable)

    hook._calibkit_quiet = True
    sys.unraisablehook = hook


def interrupted(signum: int):
    """Say what an interrupted run left published, and exit 128 + the signal number."""
    from calibkit.outputs.publish import PUBLISHED

    quiet_shutdown_noise()

    done = ", ".join(sorted({str(d) for d in PUBLISHED if d.exists()}))  # scratch sets (temp dirs) are gone
    said = (
        f"complete output sets published before it: {done}"
        if done
        else "nothing from this run was published; previous outputs are unchanged"
    )
    click.echo(f"calibkit: interrupted; {said}", err=True)
    raise SystemExit(128 + signum) from None
