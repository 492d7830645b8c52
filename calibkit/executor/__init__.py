"""Run many independent evaluations in parallel behind one interface.

    ex = executor.make(workers=2, ray=None, setup=mod.setup, setup_args=(payload,))
    with ex:
        for index, result in ex.map(mod.task, items):
            ...

``setup(*setup_args)`` runs once per worker and its return value is that worker's
:func:`state` (an ONNX Runtime session, validation data, reference outputs); ``task(item)``
reads it. Both must be module-level functions. ``workers=1`` without Ray runs in this
process; ``workers=N`` uses N spawned processes; ``ray="auto"`` or ``"HOST:PORT"`` uses Ray
actors. Results are yielded as they complete with their index into ``items``; a task that
depends only on its item and the state gives the same results on every executor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from calibkit.errors import CalibkitError
from calibkit.executor.base import Executor, set_state, state

__all__ = ["Executor", "check_workers", "make", "set_state", "state"]


def check_workers(value: Any, option: str = "--workers") -> int:
    """A positive whole number of workers, or a CalibkitError naming the option."""
    if isinstance(value, bool):
        value = str(value)
    if isinstance(value, str):
        text = value.strip()
        if not (text.lstrip("+-").isdigit()):
            raise CalibkitError(
                f"{option} {value!r}: expected a whole number of worker processes (1 runs in this process)"
            )
        value = int(text)
    if not isinstance(value, int):
        raise CalibkitError(f"{option} {value!r}: expected a whole number of worker processes (1 runs in this process)")
    if value < 1:
        raise CalibkitError(f"{option} {value}: needs at least 1 worker")
    return value


def make(
    workers: int | str | None = None,
    ray: str | None = None,
    setup: Callable[..., Any] | None = None,
    setup_args: Sequence[Any] = (),
    gpus: int = 0,
    visible_gpus: str | None = None,
) -> Executor:
    """The executor for ``--workers``/``--ray``.

    ``workers``: processes (local) or actors (Ray); None means 1 locally and every CPU of the
    Ray cluster. ``ray``: None for local processes, ``"auto"`` (RAY_ADDRESS if set, else a local
    cluster started for the run and shut down after) or a cluster's ``HOST:PORT``.
    ``gpus`` (Ray only): GPUs per actor (Ray sets each actor's CUDA_VISIBLE_DEVICES);
    ``visible_gpus``: the CUDA_VISIBLE_DEVICES a local cluster started for the run may use."""
    n = None if workers is None else check_workers(workers)
    if ray is not None:
        ray = str(ray).strip()
        if not ray:
            raise CalibkitError("--ray '': give auto or the HOST:PORT of a Ray cluster")
        from calibkit.executor.ray_exec import RayExecutor

        return RayExecutor(ray, n, setup, setup_args, gpus=gpus, visible_gpus=visible_gpus)
    if gpus:
        raise ValueError("GPUs per worker need Ray")  # local GPU workers: calibkit.collect.sharded pins them itself
    from calibkit.executor.local import InProcess, ProcessPool

    if n is None or n == 1:
        return InProcess(setup, setup_args)
    return ProcessPool(n, setup, setup_args)
