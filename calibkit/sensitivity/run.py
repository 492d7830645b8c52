"""Wiring: the switchable model, the validation set, the executor and the journal.

``Session`` is what ``sensitivity`` and ``fallback`` share: the model is made switchable once,
the FP32 reference is loaded from (or written to) the cache, the heavy state goes to each
worker once, and every evaluation is journalled under a fingerprint of everything that
determines its result (switchable model + scales, validation data, labels, metric).
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnx

from calibkit.outputs.scratch import release
from calibkit.sensitivity import evaluation as E
from calibkit.sensitivity import switch as S
from calibkit.sensitivity.search import Config, Evaluator


@dataclass
class Session:
    model: onnx.ModelProto
    sw: S.Switchable
    vs: E.ValSet
    ref_cached: bool
    key: str
    workers: int | None
    ray: str | None
    amax: dict[str, float]
    reference: onnx.ModelProto | None = None  # the FP32 model compared with (None: ``model``)
    downstream: bool = True  # evaluate changed parts only (local workers; see downstream.py)

    @property
    def ref_task(self) -> float | None:
        return self.vs.ref_task

    def evaluator(self, progress: Callable[[int, int], None] | None = None) -> tuple[Evaluator, Callable[[], None]]:
        """An evaluator backed by the executor and this session's journal; call the returned
        closer when done (it shuts the workers down)."""
        from calibkit import executor as executors
        from calibkit.executor.journal import Journal

        def waiting() -> None:
            print(
                "calibkit: another run is evaluating this model on this data; waiting for it (its evaluations will be reused)",
                file=sys.stderr,
                flush=True,
            )

        journal = Journal(E.cache_dir() / "evaluations" / f"{self.key}.jsonl", fingerprint=self.key, on_wait=waiting)
        known = {tuple(json.loads(k)): journal.get(k) for k in journal.keys()}
        state: dict = {}

        def pool():
            if "ex" not in state:
                bases = None
                if self.downstream and self.ray is None:
                    from calibkit.sensitivity.downstream import write_bases

                    bases = state["bases"] = write_bases(self.sw.model, len(self.sw.units), self.vs.feeds)
                blob = E.payload(self.sw.model, self.vs, bases)
                state["ex"] = executors.make(workers=self.workers, ray=self.ray, setup=E.setup, setup_args=(blob,))
                state["ex"].__enter__()
            return state["ex"]

        def run_missing(configs: list[Config], on_done) -> None:
            for index, result in pool().map(E.task, configs):
                journal.put(json.dumps(list(configs[index])), result)
                on_done(configs[index], result)

        def close() -> None:
            if "ex" in state:
                state.pop("ex").__exit__(None, None, None)
            if state.get("bases") is not None:
                release(state.pop("bases").folder)
            journal.close()

        return Evaluator(run_missing, known, progress), close


def open_session(
    model_path: Path,
    proto: onnx.ModelProto,
    model_fp: str,
    amax: dict[str, float],
    data,
    preprocess,
    labels,
    metric,
    feed=None,
    batch_size=None,
    workers: int | None = None,
    ray: str | None = None,
    reference: tuple[onnx.ModelProto, str] | None = None,
) -> Session:
    """``reference``: (model, fingerprint) whose FP32 outputs every configuration is compared
    with, when that is not ``proto`` itself (quantize: the original model, while the switched
    model carries recovered weights)."""
    sw = S.build(proto, amax)
    ref_proto, ref_fp = reference if reference is not None else (proto, model_fp)
    vs, cached = E.load_valset(ref_proto, ref_fp, data, preprocess, labels, metric, feed, batch_size)
    key = hashlib.sha256(f"{sw.fingerprint}\0{vs.fingerprint}".encode()).hexdigest()[:24]
    return Session(proto, sw, vs, cached, key, workers, ray, amax, ref_proto)
