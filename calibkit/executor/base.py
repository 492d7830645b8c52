"""What every executor shares: the per-worker state slot, the task wrapper that turns a
task's exception into a CalibkitError naming it, and the Executor interface.

The wrapper runs inside the worker (a spawned process, a Ray actor, or this process for
``workers=1``), so the messages are the same whichever executor ran the task."""

from __future__ import annotations

import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from calibkit.errors import CalibkitError

_STATE: Any = None
_SETUP_ERROR: CalibkitError | None = None


def state() -> Any:
    """The value this worker's ``setup`` returned (the model, session, data it keeps)."""
    return _STATE


def set_state(value: Any) -> Any:
    """Replace this worker's state; returns the previous one."""
    global _STATE
    previous, _STATE = _STATE, value
    return previous


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return ""
    f = frames[-1]
    return f" (at {f.filename.rsplit('/', 1)[-1]}:{f.lineno} in {f.name})"


def _failure(what: str, exc: Exception) -> CalibkitError:
    """A CalibkitError from an unexpected exception, keeping its type, message and traceback text."""
    err = CalibkitError(f"{what} failed: {type(exc).__name__}: {exc}{_where(exc)}")
    err.details = "".join(traceback.format_exception(exc))
    return err


def run_setup(setup: Callable[..., Any] | None, setup_args: Sequence[Any]) -> None:
    """Worker side, once per worker: keep what ``setup(*setup_args)`` returns as the state.

    A failure is kept and raised by every task, so it reaches the caller with its message
    instead of surfacing as a dead worker pool."""
    global _SETUP_ERROR
    _SETUP_ERROR = None
    if setup is None:
        set_state(None)
        return
    try:
        set_state(setup(*setup_args))
    except CalibkitError as exc:
        _SETUP_ERROR = exc
    except Exception as exc:
        _SETUP_ERROR = _failure("worker setup", exc)


def call(task: Callable[[Any], Any], index: int, item: Any) -> Any:
    """Worker side: ``task(item)``; CalibkitError passes through, anything else becomes one naming the index."""
    if _SETUP_ERROR is not None:
        raise _SETUP_ERROR
    try:
        return task(item)
    except CalibkitError:
        raise
    except Exception as exc:
        raise _failure(f"evaluation {index}", exc) from None


class Executor:
    """Runs ``task(item)`` for many items on workers that each ran ``setup`` once.

    Use as a context manager; ``map`` may be called several times inside it (the workers and
    their state persist). Leaving the block on an exception (a task error, Ctrl-C) cancels
    what is pending and stops the workers without waiting for running tasks."""

    workers: int
    kind: str

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(abort=exc_type is not None)

    def map(self, task: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[tuple[int, Any]]:
        """Yield ``(index, task(items[index]))`` as tasks complete (any order).

        ``task`` must be a module-level function (it is pickled by reference)."""
        raise NotImplementedError

    def close(self, abort: bool = False) -> None:
        raise NotImplementedError

    def run(self, task: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        """``map`` collected in item order: the same list whatever the executor or completion order."""
        items = list(items)
        out: list[Any] = [None] * len(items)
        for index, result in self.map(task, items):
            out[index] = result
        return out
