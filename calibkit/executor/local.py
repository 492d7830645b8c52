"""Executors on this machine: in-process (``workers=1``) and a pool of spawned worker processes.

The pool ships ``setup_args`` once per worker (ProcessPoolExecutor initargs) and each task
only sends its item. Workers ignore SIGINT (Ctrl-C is the caller's to handle: it cancels what
is pending and terminates the workers) and, on Linux, die with the caller if it is killed."""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from calibkit.errors import CalibkitError
from calibkit.executor.base import Executor, call, run_setup, set_state, state
from calibkit.executor.orphans import init_worker, quiet_cancelled_results, spawning


class InProcess(Executor):
    """``workers=1``: tasks run here, one after the other, nothing pickled."""

    kind = "in-process"
    workers = 1

    def __init__(self, setup: Callable[..., Any] | None = None, setup_args: Sequence[Any] = ()) -> None:
        self._setup, self._setup_args = setup, tuple(setup_args)
        self._previous: Any = None
        self._entered = False

    def __enter__(self) -> InProcess:
        self._previous = state()
        self._entered = True
        run_setup(self._setup, self._setup_args)
        return self

    def map(self, task: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[tuple[int, Any]]:
        if not self._entered:
            raise RuntimeError("use the executor in a with-block")
        for index, item in enumerate(items):
            yield index, call(task, index, item)

    def close(self, abort: bool = False) -> None:
        if self._entered:
            run_setup(None, ())
            set_state(self._previous)
            self._entered = False


def _init_worker(parent_pid: int, setup_file: str) -> None:
    init_worker(parent_pid)  # dies with the parent, also one killed while this worker was starting
    import pickle

    with open(setup_file, "rb") as fh:
        setup, setup_args = pickle.load(fh)  # calibkit's own file, written by the parent just before
    run_setup(setup, setup_args)


def _signal_name(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class ProcessPool(Executor):
    """``workers=N``: N spawned processes (spawn, not fork: no inherited threads or CUDA state)."""

    kind = "local processes"

    def __init__(self, workers: int, setup: Callable[..., Any] | None = None, setup_args: Sequence[Any] = ()) -> None:
        self.workers = workers
        self._setup, self._setup_args = setup, tuple(setup_args)
        self._pool: ProcessPoolExecutor | None = None
        self._seen: dict[int, multiprocessing.process.BaseProcess] = {}

    def __enter__(self) -> ProcessPool:
        import pickle

        from calibkit.outputs import scratch

        # The setup (a model's bytes, the reference outputs: megabytes) goes to the workers in a
        # file, not in their start-up data: a worker's start-up data is written to its pipe while
        # the run's signals are deferred (orphans.spawning), and a write bigger than the pipe to a
        # worker killed meanwhile (SIGTERM to the process group) would block for good.
        self._scratch = scratch.make("workers")
        setup_file = self._scratch / "setup.pickle"
        with open(setup_file, "wb") as fh:
            pickle.dump((self._setup, self._setup_args), fh, protocol=pickle.HIGHEST_PROTOCOL)
        ctx = multiprocessing.get_context("spawn")
        self._pool = ProcessPoolExecutor(
            self.workers,
            mp_context=ctx,
            initializer=_init_worker,
            initargs=(os.getpid(), str(setup_file)),
        )
        return self

    def _remember_processes(self) -> None:
        self._seen.update(getattr(self._pool, "_processes", None) or {})

    def _died(self) -> CalibkitError:
        for p in self._seen.values():
            p.join(5)  # the pool is terminating the others; wait so the exit codes are known
        codes = {p.exitcode for p in self._seen.values()} - {None, 0}
        codes = (codes - {-signal.SIGTERM}) or codes  # SIGTERM: the pool stopping the survivors
        how = sorted(_signal_name(c) for c in codes)
        said = f" ({', '.join(how)})" if how else ""
        return CalibkitError(
            f"a worker process died while running evaluations{said}: user code (a metric or loader) ending the "
            "process (os._exit), out of memory, or a crash in native code? Run with --workers 1 to see it here, "
            "or try fewer --workers"
        )

    def map(self, task: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[tuple[int, Any]]:
        if self._pool is None:
            raise RuntimeError("use the executor in a with-block")
        try:
            with spawning():
                futures = {self._pool.submit(call, task, i, item): i for i, item in enumerate(items)}
        except BrokenProcessPool:
            raise self._died() from None
        self._remember_processes()
        pending = set(futures)
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                self._remember_processes()
                for fut in sorted(done, key=futures.__getitem__):
                    try:
                        result = fut.result()
                    except BrokenProcessPool:
                        raise self._died() from None
                    yield futures[fut], result
        finally:
            if pending:
                quiet_cancelled_results()  # the manager thread may still set a result of one cancelled here
            for fut in pending:
                fut.cancel()

    def close(self, abort: bool = False) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            self._close(pool, abort)
        finally:
            from calibkit.outputs import scratch

            scratch.release(self._scratch)

    def _close(self, pool: ProcessPoolExecutor, abort: bool) -> None:
        self._remember_processes()
        if not abort:
            pool.shutdown(wait=True)
            return
        procs = list(self._seen.values())
        quiet_cancelled_results()
        pool.shutdown(wait=False, cancel_futures=True)
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join()
        pool.shutdown(wait=True)
