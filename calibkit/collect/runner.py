"""Running the exposed-outputs model: the session and the output-binding runner."""

from __future__ import annotations

import numpy as np
import onnx

from calibkit.graph.model import with_outputs
from calibkit.sessions import session


def is_ort_error(exc: BaseException) -> bool:
    return type(exc).__module__.startswith("onnxruntime")


def exposed_session(
    model: onnx.ModelProto,
    outputs: list[str],
    device: str,
    threads: int,
    where: str,
    external_dir: str | None = None,
    gpu_mem_limit: int | None = None,
):
    """A session of ``model`` returning ``outputs`` too. Declared output shapes are dropped
    (real exports declare wrong ones, and ORT checks bound buffers against them); weights left
    on disk (external data) are read by ORT from ``external_dir``, never copied into the graph."""
    return session(
        with_outputs(model, outputs, drop_shapes=True),
        device=device,
        threads=threads,
        where=where,
        external_dir=external_dir,
        gpu_mem_limit=gpu_mem_limit,
    )


class ActivationRunner:
    """Runs the exposed-outputs model, writing activations into buffers it reuses.

    Exposing hundreds of intermediates makes ORT allocate (and the kernel zero) a batch worth
    of fresh pages on every run; binding the outputs to kept buffers makes later runs write in
    place. Buffers always come from a first unbound run per input signature (their shapes are
    what ORT really produced, not what the model declares); a bound run that fails (an output
    whose shape depends on the values) is redone unbound and the buffers are taken from it.
    ``slots`` sets of buffers alternate, so one can be reduced while the next is filled.
    Outputs that are not plain tensors (sequences) switch binding off.
    """

    def __init__(self, sess, outputs: list[str], slots: int = 2) -> None:
        self.sess = sess
        self.outputs = outputs
        self.slots = slots
        self.signature = None
        self.sets: list[tuple[object, list[np.ndarray]]] = []
        self.turn = 0
        self.bindable = True

    def _bind(self, buffers: list[np.ndarray]) -> tuple[object, list[np.ndarray]]:
        binding = self.sess.io_binding()
        for name, buf in zip(self.outputs, buffers):
            binding.bind_output(name, "cpu", 0, buf.dtype, buf.shape, buf.ctypes.data)
        return binding, buffers

    def set_slots(self, slots: int) -> None:
        """1: one buffer set (the caller reduces before the next run); 2: double buffering."""
        self.slots = slots
        self.sets = self.sets[:slots]
        self.turn = 1 % slots

    def _unbound(self, feed: dict[str, np.ndarray], sig) -> list[np.ndarray]:
        values = self.sess.run(self.outputs, dict(feed))
        self.signature = sig
        if self.bindable and all(isinstance(v, np.ndarray) and v.flags.c_contiguous for v in values):
            self.sets = [self._bind(values)]  # the fresh outputs become the first buffer set
            self.turn = 1 % self.slots
        else:
            self.bindable = False
            self.sets = []
        return values

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        sig = tuple((k, v.shape, v.dtype.str) for k, v in sorted(feed.items()))
        if sig != self.signature or not self.bindable:
            return self._unbound(feed, sig)
        if self.turn >= len(self.sets):
            self.sets.append(self._bind([np.empty_like(b) for b in self.sets[0][1]]))
        binding, buffers = self.sets[self.turn]
        for k, v in feed.items():
            binding.bind_cpu_input(k, np.ascontiguousarray(v))
        try:
            self.sess.run_with_iobinding(binding)
        except Exception as exc:
            if not (is_ort_error(exc) or isinstance(exc, RuntimeError)):
                raise
            return self._unbound(feed, sig)
        self.turn = (self.turn + 1) % self.slots
        return buffers
