"""TensorRT cache, ORT TensorsData, histogram store and scales.json round trips."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from calibkit.artifacts import histograms as store
from calibkit.artifacts import tensors_data as ort_tensors
from calibkit.artifacts import trt_cache as cache
from calibkit.errors import CalibkitError
from calibkit.numerics.histogram import TensorHistogram


def test_version_codes():
    assert cache.encode_version("10.16.1") == 101601
    assert cache.encode_version("8.6.1") == 8601
    assert cache.encode_version("11.0") == 110000
    with pytest.raises(CalibkitError, match="trt-version"):
        cache.encode_version("ten")


def test_cache_bytes_and_round_trip(tmp_path):
    scales = {"input": 0.0078740157, "conv:0/out": 1.0 / 127, "a: b": 3.5e-3}
    c = cache.Cache(101601, "EntropyCalibration2", scales)
    path = c.write(tmp_path / "m.cache")
    text = path.read_text()
    assert text.splitlines()[0] == "TRT-101601-EntropyCalibration2"
    assert "input: " + struct.pack(">f", 0.0078740157).hex() in text
    assert "input: 3c010204" in text
    back = cache.read(path)
    assert back.version == 101601 and back.algorithm == "EntropyCalibration2"
    assert list(back.scales) == list(scales)  # ':' in names survive (split on the last ': ')
    for k, v in scales.items():
        assert back.scales[k] == np.float32(v)
    assert back.text() == text


@pytest.mark.parametrize(
    "body,line",
    [
        ("TRT-8601-EntropyCalibration2\nx: 3c010204\ny 3c010204\n", 3),
        ("TRT-8601-EntropyCalibration2\nx: 3c0102\n", 2),
        ("TRT-8601-EntropyCalibration2\nx: zzzzzzzz\n", 2),
        ("TRT-8601-EntropyCalibration2\nx: 7fc00000\n", 2),  # NaN scale
        ("TRT-8601-EntropyCalibration2\nx: 3c010204\nx: 3c010204\n", 3),
        ("garbage\n", 1),
    ],
)
def test_malformed_cache_names_the_line(tmp_path, body, line):
    p = tmp_path / "bad.cache"
    p.write_text(body)
    with pytest.raises(CalibkitError, match=rf"bad.cache:{line}:"):
        cache.read(p)


def test_cache_refuses_non_finite_scale():
    with pytest.raises(CalibkitError, match="tensor 'x'"):
        cache.Cache(8601, "EntropyCalibration2", {"x": float("nan")}).text()


def test_tensors_data_loads_in_onnxruntime(tmp_path):
    from onnxruntime.quantization.calibrate import CalibrationMethod, load_tensors_data

    path = ort_tensors.write(tmp_path / "t.json", {"a": 1.5, "b:0": 0.25})
    td = load_tensors_data(path)
    assert td.calibration_method == CalibrationMethod.MinMax
    assert float(td["a"].range_value[1]) == 1.5 and float(td["a"].range_value[0]) == -1.5
    assert float(td["b:0"].range_value[1]) == 0.25


def test_histogram_store_round_trip_is_byte_stable(tmp_path):
    h = TensorHistogram()
    h.update(np.array([1.0, -3.0, np.nan], np.float32))
    hs = store.HistogramSet(
        {"t": h, "u": TensorHistogram()}, {"model_fingerprint": "m", "data_fingerprint": "d", "samples": 3}
    )
    a = store.save(hs, tmp_path / "a.npz").read_bytes()
    back = store.load(tmp_path / "a.npz")
    b = store.save(back, tmp_path / "b.npz").read_bytes()
    assert a == b
    np.testing.assert_array_equal(back.tensors["t"].counts, h.counts)
    assert back.tensors["t"].nan == 1 and back.meta["samples"] == 3


def test_store_rejects_foreign_and_corrupt(tmp_path):
    p = tmp_path / "x.npz"
    np.savez(p, a=np.zeros(3))
    with pytest.raises(CalibkitError, match="x.npz"):
        store.load(p)
    p.write_bytes(b"PK\x03\x04junk")
    with pytest.raises(CalibkitError, match="x.npz"):
        store.load(p)


def test_merge_refuses_other_model():
    a = store.HistogramSet({}, {"model_fingerprint": "m1"})
    b = store.HistogramSet({}, {"model_fingerprint": "m2"})
    with pytest.raises(CalibkitError, match="another model"):
        a.merge(b)
