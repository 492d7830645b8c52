"""Fuzz histograms.npz (store.load / merge_files): every input gives a valid HistogramSet or a
one-line CalibkitError. Derandomized, no example database. Examples per property:

* store.load, arbitrary bytes ........................ 100
* store.load, mutated valid archive .................. 100
* store.merge_files, a file merged twice ............. 20
"""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
from fuzz_common import TMP, fuzz, json_values, odd_numbers, outcome, put  # noqa: F401
from hypothesis import given
from hypothesis import strategies as st

from calibkit.artifacts import histograms as store
from calibkit.artifacts import scales
from calibkit.errors import CalibkitError
from calibkit.numerics.histogram import NUM_BINS, TensorHistogram


# --------------------------------------------------------------------------- histograms.npz
def _hset() -> store.HistogramSet:
    a = TensorHistogram()
    a.update(np.linspace(-3, 5, 1000, dtype=np.float32))
    b = TensorHistogram()
    b.update(np.array([np.nan, 1.0, np.inf], dtype=np.float32))
    return store.HistogramSet(
        {"a": a, "b": b, "empty": TensorHistogram()},
        {"model_fingerprint": "sha256:x", "data_fingerprint": "sha256:d", "data": "d.npz", "samples": 3},
    )


GOOD_NPZ = store.save(_hset(), TMP / "good.npz").read_bytes()


def _members(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for k, a in arrays.items():
            b = io.BytesIO()
            np.lib.format.write_array(b, a, allow_pickle=a.dtype.hasobject)
            zf.writestr(k + ".npy", b.getvalue())
    return buf.getvalue()


def check_hset(h: store.HistogramSet | None) -> None:
    if h is None:
        return
    assert isinstance(h.samples, int)
    for name, t in h.tensors.items():
        assert t.counts.shape == (NUM_BINS,) and t.count >= 0, name
    for method in ("entropy", "percentile", "minmax", "mse"):
        outcome(scales.compute, h, method, None, 1)


@fuzz(100)
@given(st.binary(max_size=400) | st.binary(max_size=200).map(lambda b: GOOD_NPZ[: len(b)] + b))
def test_store_load_bytes(data):
    check_hset(outcome(store.load, put("fuzz.npz", data)))


meta_values = st.one_of(
    json_values,
    st.builds(
        lambda d: {"format": "calibkit-histograms", **d},
        st.dictionaries(
            st.sampled_from(["version", "samples", "dropped_samples", "shards", "model_fingerprint", "data"]),
            odd_numbers | json_values,
            max_size=3,
        ),
    ),
)


def _mutate_array(a: np.ndarray, how: str, data) -> np.ndarray | None:
    if how == "drop":
        return None
    if how == "dtype":
        dtype = np.dtype(
            data.draw(st.sampled_from(["<U3", "f4", "f8", "f2", "i1", "u8", "c8", "bool", "O", "S4", "m8[s]", "V8"]))
        )
        try:
            return a.astype(dtype)
        except (ValueError, TypeError):
            return np.zeros(a.shape, dtype)
    if how == "shape":
        return a.reshape(-1) if a.ndim > 1 else a.reshape(1, -1) if a.size else np.zeros((2, 2), a.dtype)
    if how == "0-d":
        return np.array(a.flat[0] if a.size else 0, dtype=a.dtype)
    if how == "fortran":
        return np.asfortranarray(np.stack([a, a], axis=-1))
    if how == "value" and a.size and a.dtype.kind in "iuf":
        b = a.copy()
        value = data.draw(
            st.sampled_from([-1, -(2**31), 2**31 - 1, 0, 1, 1025, 1026, -300])
            if a.dtype.kind in "iu"
            else st.sampled_from([np.nan, np.inf, -np.inf, 0.0, -5.0, 1e300])
        )
        b.flat[data.draw(st.integers(0, a.size - 1))] = np.array(value).astype(a.dtype)  # wraps for unsigned types
        return b
    if how == "dup" and a.dtype.kind == "U" and a.size > 1:
        b = a.copy()
        b[1] = b[0]
        return b
    return a


@fuzz(100)
@given(st.data())
def test_store_load_mutated(data):
    arrays = _members(GOOD_NPZ)
    for _ in range(data.draw(st.integers(1, 2))):
        key = data.draw(st.sampled_from(sorted(arrays)))
        if key == "meta" and data.draw(st.booleans()):
            arrays[key] = np.frombuffer(json.dumps(data.draw(meta_values)).encode(), dtype=np.uint8)
            continue
        new = _mutate_array(
            arrays[key], data.draw(st.sampled_from(["drop", "dtype", "shape", "0-d", "fortran", "value", "dup"])), data
        )
        if new is None:
            arrays.pop(key)
        else:
            arrays[key] = new
    check_hset(outcome(store.load, put("fuzz_mut.npz", _npz(arrays))))


@fuzz(20)
@given(st.integers(0, 3))
def test_store_merge_same_file_twice(extra):
    p = put("twice.npz", GOOD_NPZ)
    with pytest.raises(CalibkitError) as info:
        store.merge_files([p] * (2 + extra))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("meta", [[1, 2], "text", 3, None])
def test_store_meta_not_an_object(meta):
    arrays = _members(GOOD_NPZ)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    with pytest.raises(CalibkitError, match="not a calibkit histogram file"):
        store.load(put("regress_meta.npz", _npz(arrays)))
