"""Compiled binning of |x| into the 2048 power-of-two histogram bins (optional numba).

``bin_counts(kernel(), flat, scale)`` returns, for a 1-d float32/float64 array whose finite values all
satisfy ``|x| * scale < 2048``, the int64 counts of ``trunc(|x| * scale)`` over its finite
values, computed in the array's own dtype: exactly what the NumPy reference in
``histogram.py`` computes (abs, multiply by the power-of-two ``scale``, truncate, bincount),
in one pass that releases the GIL (the reducer runs beside ONNX Runtime).

numba is optional (``pip install calibkit[fast]``); without it, or with
``CALIBKIT_KERNEL=numpy``, ``kernel()`` is None and the NumPy path runs
(``CALIBKIT_KERNEL=numba``: wait for the kernel rather than reduce with NumPy meanwhile). The kernel is
compiled once per dtype and cached on disk by numba; loading it takes about a second, so the
collector starts ``warm()`` first and reduces with NumPy until it is ready.
"""

from __future__ import annotations

import contextlib
import os
import threading

import numpy as np

from calibkit.errors import CalibkitError

NUM_BINS = 2048  # histogram.NUM_BINS (no import: histogram imports this module)
_BLOCK = 8192  # values indexed at a time (the index block stays in L1)
_CHUNK = 1 << 30  # values per kernel call: its int32 sub-counters cannot overflow

_lock = threading.Lock()
_state: dict[str, object] = {}


def _build():
    import numba

    jit = numba.njit(nogil=True, cache=True)

    @jit
    def _index(block, scale, idx):  # pragma: no cover - compiled
        # vectorised: |x| * scale truncated; NaN/Inf (not < NUM_BINS) go to the spare bin
        for i in range(block.size):
            v = abs(block[i]) * scale
            idx[i] = np.int32(v) if v < NUM_BINS else NUM_BINS

    @jit
    def _bin(flat, scale, counts):  # pragma: no cover - compiled
        # Blocks of indices, then four interleaved int32 sub-histograms: runs of one bin (the
        # zeros of a ReLU) do not wait on each other's increments.
        idx = np.empty(_BLOCK, np.int32)
        sub = np.zeros((4, NUM_BINS + 1), np.int32)
        n = flat.size
        for s in range(0, n, _BLOCK):
            k = min(n - s, _BLOCK)
            ib = idx[:k]
            _index(flat[s : s + k], scale, ib)
            m = k - k % 4
            for i in range(0, m, 4):
                sub[0, ib[i]] += 1
                sub[1, ib[i + 1]] += 1
                sub[2, ib[i + 2]] += 1
                sub[3, ib[i + 3]] += 1
            for i in range(m, k):
                sub[0, ib[i]] += 1
        for j in range(4):
            for b in range(NUM_BINS):
                counts[b] += sub[j, b]

    return _bin


def kernel():
    """The compiled kernel once it is loaded, else None: numba missing, ``CALIBKIT_KERNEL=numpy``,
    or still loading in ``warm``'s thread (the NumPy path gives the same counts meanwhile)."""
    mode = os.environ.get("CALIBKIT_KERNEL", "").lower()
    if mode == "numpy":
        return None
    fn = _state.get("fn", False)
    if fn is False:
        if (_state.get("loading") or _state.get("deferred")) and mode != "numba":
            return None  # being loaded by warm()'s thread: do not wait for it
        fn = _load()
    if fn is None and mode == "numba":
        raise CalibkitError(
            f"CALIBKIT_KERNEL=numba but the compiled reducer cannot be loaded ({_state.get('why')}); pip install 'calibkit[fast]' or unset it"
        )
    return fn


def _load():
    with _lock:
        fn = _state.get("fn", False)
        if fn is False:
            try:
                fn = _build()
                fn(np.zeros(1, np.float32), np.float32(1.0), np.zeros(NUM_BINS, np.int64))  # load or compile now
            except Exception as exc:  # numba missing, or unable to compile here: the NumPy path
                fn = None
                _state["why"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
            _state["fn"] = fn
    return fn


@contextlib.contextmanager
def deferred():
    """Within: ``kernel()`` does not load numba itself (the NumPy path runs, same counts) unless
    ``warm()`` starts loading it: a small collection never pays numba's second of import."""
    before = _state.get("deferred", False)
    _state["deferred"] = True
    try:
        yield
    finally:
        _state["deferred"] = before


def warm() -> threading.Thread | None:
    """Load the kernel in a daemon thread (numba's import and its LLVM take about a second);
    until it is ready, ``kernel()`` returns None. None when nothing is to be loaded."""
    if os.environ.get("CALIBKIT_KERNEL", "").lower() == "numpy" or "fn" in _state or _state.get("loading"):
        return None
    _state["loading"] = True
    t = threading.Thread(target=_load, name="calibkit-kernel-load", daemon=True)
    t.start()
    return t


def bin_counts(fn, flat: np.ndarray, scale: float) -> np.ndarray:
    """int64 counts of the finite values' bins; ``flat`` 1-d float32 or float64."""
    counts = np.zeros(NUM_BINS, np.int64)
    s = flat.dtype.type(scale)
    for start in range(0, flat.size, _CHUNK):
        fn(flat[start : start + _CHUNK], s, counts)
    return counts
