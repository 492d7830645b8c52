"""Executor on Ray: one actor per worker, each running ``setup`` once.

``setup_args`` go into the object store once (``ray.put``) and every actor's constructor gets
that reference, so the heavy payload travels once per node, never per task. With
``--ray auto`` and no RAY_ADDRESS a local cluster is started for the run (its logs in a
temporary folder) and shut down after; a process that already called ``ray.init`` keeps its
connection and its cluster."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from calibkit import optional
from calibkit.errors import CalibkitError
from calibkit.executor.base import Executor, call, run_setup
from calibkit.outputs.scratch import make as scratch_folder
from calibkit.outputs.scratch import release

NEEDS_RAY = "--ray needs Ray: pip install 'calibkit[ray]'"
MIN_OBJECT_STORE = 80 * 1024 * 1024


def import_ray():
    return optional.require("ray", NEEDS_RAY)


class _Worker:
    """The actor: state from ``setup`` lives in this process for the actor's lifetime."""

    def __init__(self, setup: Callable[..., Any] | None, setup_args: Sequence[Any]) -> None:
        run_setup(setup, setup_args)

    def call(self, task: Callable[[Any], Any], index: int, item: Any) -> Any:
        return call(task, index, item)


def _check_reachable(address: str) -> None:
    """Ray retries an unreachable address for minutes; a plain TCP connect answers in seconds."""
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise CalibkitError(
            f"--ray {address!r}: expected HOST:PORT of a Ray cluster's head (e.g. 10.0.0.5:6379), or auto"
        )
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as exc:
        raise CalibkitError(
            f"--ray {address}: no Ray cluster reachable there ({exc.strerror or exc}); start one with `ray start --head` or check the address"
        ) from None


def _payload_bytes(value: Any, depth: int = 0) -> int:
    """Rough size of the buffers in setup_args (bytes, arrays), without serialising them."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return len(value)
    if hasattr(value, "nbytes") and isinstance(value.nbytes, int):
        return value.nbytes
    if depth < 4 and isinstance(value, (tuple, list)):
        return sum(_payload_bytes(v, depth + 1) for v in value)
    if depth < 4 and isinstance(value, dict):
        return sum(_payload_bytes(v, depth + 1) for v in value.values())
    return 0


def _start_local(ray, workers: int, setup_args: Sequence[Any], visible_gpus: str | None = None) -> str:
    """Start a light local cluster: ``workers`` CPUs, a small object store, logs in a temp folder;
    ``visible_gpus``: the only GPUs it may hand out (CUDA_VISIBLE_DEVICES while it starts)."""
    import logging

    temp = str(scratch_folder("ray"))
    store = max(MIN_OBJECT_STORE, 2 * _payload_bytes(setup_args) + 64 * 1024 * 1024)
    path = os.pathsep.join(p for p in sys.path if p)
    saved = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible_gpus is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = visible_gpus  # the raylet inherits it and counts these GPUs only
    try:
        ray.init(
            num_cpus=workers,
            include_dashboard=False,
            object_store_memory=store,
            _temp_dir=temp,
            log_to_driver=False,
            logging_level=logging.ERROR,
            runtime_env={"env_vars": {"PYTHONPATH": path}},  # the actors import what this process imports
        )
    except Exception as exc:
        raise CalibkitError(
            f"--ray auto: could not start a local Ray cluster: {type(exc).__name__}: {exc} (logs in {temp})"
        ) from None
    finally:
        if visible_gpus is not None:
            if saved is None:
                os.environ.pop("CUDA_VISIBLE_DEVICES", None)
            else:
                os.environ["CUDA_VISIBLE_DEVICES"] = saved
    return temp


def _same_address(ray, address: str) -> bool:
    """Whether this process's Ray connection is to ``address`` (HOST:PORT, ray:// forms, localhost)."""
    try:
        ours = ray.get_runtime_context().gcs_address
    except Exception:
        return False

    def norm(a: str) -> tuple[str, str]:
        host, _, port = a.split("://", 1)[-1].rpartition(":")
        try:
            host = socket.gethostbyname(host.strip("[]"))
        except OSError:
            pass
        return ("127.0.0.1" if host.startswith("127.") else host), port

    return norm(ours) == norm(address)


def _connect(ray, address: str) -> None:
    try:
        ray.init(address=address, log_to_driver=False)
    except Exception as exc:
        raise CalibkitError(f"--ray {address}: could not connect: {type(exc).__name__}: {exc}") from None


class RayExecutor(Executor):
    kind = "ray"

    def __init__(
        self,
        address: str,
        workers: int | None,
        setup: Callable[..., Any] | None = None,
        setup_args: Sequence[Any] = (),
        gpus: int = 0,
        visible_gpus: str | None = None,
    ) -> None:
        self.ray = import_ray()
        self.gpus, self.visible_gpus = gpus, visible_gpus
        self.address = address
        self._requested = workers
        self.workers = workers or 0
        self._setup, self._setup_args = setup, tuple(setup_args)
        self._actors: list[Any] = []
        self._args_ref = None
        self._started = False
        self.temp_dir: str | None = None
        self.where = ""

    # ------------------------------------------------------------------ lifetime
    def __enter__(self) -> RayExecutor:
        ray = self.ray
        target = os.environ.get("RAY_ADDRESS") if self.address == "auto" else self.address
        try:
            if target and target != "auto":
                _check_reachable(target)
            if ray.is_initialized():
                if self.address != "auto" and not _same_address(ray, self.address):
                    raise CalibkitError(
                        f"--ray {self.address}: this process is already connected to another Ray cluster; use --ray auto to run there"
                    )
                self.where = "the Ray cluster this process is connected to"
            elif target:
                _connect(ray, target)
                self.where = f"the Ray cluster at {target}"
            else:
                self.temp_dir = _start_local(
                    ray, self._requested or os.cpu_count() or 1, self._setup_args, self.visible_gpus
                )
                self._started = True
                self.where = "a local Ray cluster"
            cpus = int(ray.cluster_resources().get("CPU", 0))
            self.workers = self._requested or max(cpus, 1)
            if self.workers > cpus:
                raise CalibkitError(f"--workers {self.workers}: {self.where} has {cpus} CPUs; ask for at most {cpus}")
            have = int(ray.cluster_resources().get("GPU", 0))
            if self.gpus and have < self.workers * self.gpus:
                raise CalibkitError(f"{self.where} has {have} GPU(s); {self.workers} worker(s) need {self.gpus} each")
            self._args_ref = ray.put(self._setup_args)
        except BaseException:
            self.close(abort=True)
            raise
        return self

    def close(self, abort: bool = False) -> None:
        ray = self.ray
        for actor in self._actors:
            try:
                ray.kill(actor)
            except Exception:
                pass
        self._actors = []
        self._args_ref = None
        if self._started:
            self._started = False
            ray.shutdown()
            if self.temp_dir:
                release(self.temp_dir)

    # ------------------------------------------------------------------ work
    def _grow(self, n: int) -> None:
        cls = self.ray.remote(num_cpus=1, num_gpus=self.gpus, max_restarts=0, max_task_retries=0)(_Worker)
        while len(self._actors) < n:
            self._actors.append(cls.remote(self._setup, self._args_ref))

    def _raise(self, exc: BaseException, index: int) -> None:
        ex = self.ray.exceptions
        cause = getattr(exc, "cause", None)
        if isinstance(exc, ex.RayTaskError) and isinstance(cause, CalibkitError):
            raise cause from None
        if isinstance(exc, (ex.RayActorError, ex.WorkerCrashedError, ex.NodeDiedError, ex.LocalRayletDiedError)):
            raise CalibkitError(
                f"a Ray worker died while running evaluation {index} ({type(exc).__name__}): out of memory, or a crash in native code? Try fewer --workers"
            ) from None
        raise CalibkitError(
            f"evaluation {index} failed on Ray: {type(cause or exc).__name__}: {cause or exc}"
        ) from None

    def map(self, task: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[tuple[int, Any]]:
        if self._args_ref is None:
            raise RuntimeError("use the executor in a with-block")
        ray = self.ray
        items = list(items)
        self._grow(min(self.workers, len(items)))
        idle = list(reversed(self._actors))
        task_ref = ray.put(task)
        pending: dict[Any, tuple[int, Any]] = {}
        nxt = 0
        try:
            while nxt < len(items) or pending:
                while idle and nxt < len(items):
                    actor = idle.pop()
                    pending[actor.call.remote(task_ref, nxt, items[nxt])] = (nxt, actor)
                    nxt += 1
                done, _ = ray.wait(list(pending), num_returns=1)
                index, actor = pending.pop(done[0])
                try:
                    result = ray.get(done[0])
                except ray.exceptions.RayError as exc:
                    self._raise(exc, index)
                idle.append(actor)
                yield index, result
        finally:
            for ref in pending:
                try:
                    ray.cancel(ref)
                except Exception:
                    pass
