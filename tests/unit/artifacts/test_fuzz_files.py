"""Fuzz the readers of user files: every input gives a valid object or a one-line CalibkitError.

Derandomized (CI is deterministic), no example database. Examples per property:

* cache.parse, arbitrary text ........................ 300
* cache.parse, structured lines (odd hex/versions) ... 300
* cache.read, arbitrary bytes ........................ 150
* scales.read, arbitrary bytes ....................... 150
* scales.read, recursive JSON ........................ 200
* scales.read, mutated valid file .................... 200
* Preprocess.from_dict, recursive JSON ............... 200
* Preprocess.from_dict, mutated fields ............... 300
* Preprocess.from_file, arbitrary bytes .............. 150

histograms.npz: tests/test_fuzz_store.py. Plus plain regression tests for every bug the fuzzer found.
"""

from __future__ import annotations

import json
import math
import struct

import pytest
from fuzz_common import TMP, fuzz, json_values, note, odd_numbers, outcome, put  # noqa: E402,F401
from hypothesis import given
from hypothesis import strategies as st

from calibkit.artifacts import scales
from calibkit.artifacts import trt_cache as cache
from calibkit.data.images import Preprocess
from calibkit.errors import CalibkitError


# --------------------------------------------------------------------------- TensorRT cache
def check_cache(c: cache.Cache | None) -> None:
    if c is None:
        return
    assert isinstance(c.version, int) and isinstance(c.algorithm, str)
    for name, s in c.scales.items():
        assert name and isinstance(s, float) and math.isfinite(s) and s > 0
    if c.algorithm in cache.ALGORITHMS:  # what was read writes back the same
        assert cache.parse(c.text()) == c


@fuzz(300)
@given(st.text())
def test_cache_parse_text(text):
    check_cache(outcome(cache.parse, text))


hex_scales = st.one_of(
    st.floats(width=32).map(lambda f: struct.pack(">f", f).hex()),
    st.sampled_from(
        [
            "00000000",
            "80000000",
            "00000001",
            "7f800000",
            "ff800000",
            "7fc00000",
            "3c010a14",
            "3C010A14",
            "3c010a1",
            "3c010a140",
            "zzzzzzzz",
        ]
    ),
    st.text("0123456789abcdef", min_size=7, max_size=9),
)
headers = st.one_of(
    st.sampled_from(
        [
            "TRT-101601-EntropyCalibration2",
            "TRT-8601-MinMaxCalibration",
            "TRT--1-EntropyCalibration2",
            "TRT-" + "9" * 5000 + "-X",
            "TRT-1-",
            "trt-1-x",
            "",
        ]
    ),
    st.builds(lambda v, a: f"TRT-{v}-{a}", st.integers(), st.text(max_size=12)),
)
names = st.one_of(
    st.text(min_size=0, max_size=10), st.sampled_from(["a: b", "x:", ": ", "a\x00b", " ", "a\u2028b", "\udcff"])
)


@fuzz(300)
@given(headers, st.lists(st.tuples(names, st.sampled_from([": ", ":", " : ", ""]), hex_scales), max_size=6))
def test_cache_parse_lines(header, rows):
    text = "\n".join([header] + [f"{n}{sep}{h}" for n, sep, h in rows])
    check_cache(outcome(cache.parse, text))


@fuzz(150)
@given(
    st.binary(max_size=300)
    | st.builds(
        lambda t: ("TRT-101601-EntropyCalibration2\n" + t).encode("utf-8", "surrogatepass"), st.text(max_size=60)
    )
)
def test_cache_read_bytes(data):
    check_cache(outcome(cache.read, put("fuzz.cache", data)))


@pytest.mark.parametrize("version", ["9" * 5000, "9" * 40, "\u0661\u0660"])
def test_cache_huge_or_non_ascii_version_is_refused(version):
    # Found by fuzzing: a 5000-digit version raised ValueError (int digit limit) from int().
    with pytest.raises(CalibkitError, match="bad header"):
        cache.parse(f"TRT-{version}-EntropyCalibration2\n")


def test_cache_name_with_nul_is_refused_on_read():
    # Found by fuzzing: a name holding NUL parsed, but the cache could not be written back.
    with pytest.raises(CalibkitError, match="line break"):
        cache.parse("TRT-101601-EntropyCalibration2\na\x00b: 3c010a14\n")


# --------------------------------------------------------------------------- scales.json
def check_table(t: scales.ScaleTable | None) -> None:
    if t is None:
        return
    for name, s in t.scales().items():
        assert isinstance(s, float) and math.isfinite(s) and s > 0, (name, s)
    for name, a in t.amax().items():
        assert math.isfinite(a) and a > 0, (name, a)
    scales.most_clipped(t)
    scales.nonfinite(t)


@fuzz(150)
@given(st.binary(max_size=300))
def test_scales_read_bytes(data):
    check_table(outcome(scales.read, put("fuzz_scales.json", data)))


def _scales_doc(value):
    return {"format": "calibkit-scales", "version": 1, "method": {"name": "entropy", "params": {}}, "tensors": value}


@fuzz(200)
@given(
    json_values
    | json_values.map(_scales_doc)
    | st.dictionaries(st.text(max_size=6), json_values, max_size=3).map(lambda d: {"format": "calibkit-scales", **d})
)
def test_scales_read_json(doc):
    check_table(outcome(scales.read, put("fuzz_scales.json", json.dumps(doc))))


GOOD_AMAX = 2.5


def _good_tensor():
    return {
        "amax": GOOD_AMAX,
        "scale": scales.int8_scale(GOOD_AMAX),
        "min": -1.0,
        "max": 2.5,
        "absmax": 2.5,
        "count": 10,
        "nan": 0,
        "inf": 0,
        "clipped": 0.0,
        "range_exp": 2,
        "degenerate": False,
    }


@fuzz(200)
@given(
    st.sampled_from(sorted(_good_tensor())),
    odd_numbers | json_values,
    st.booleans(),
    st.sampled_from(["conv1", "a\nb", "", "x\x00", "a: b", "é"]),
    st.sampled_from(["format", "version", "method", "model", "data", "preprocess", "cache", None]),
    odd_numbers | json_values,
)
def test_scales_read_mutated(field, value, drop, name, top, top_value):
    t = _good_tensor()
    if drop:
        t.pop(field)
    else:
        t[field] = value
    doc = {
        "format": "calibkit-scales",
        "version": 1,
        "method": {"name": "entropy", "params": {"levels": 128}},
        "tensors": {name: t},
    }
    if top:
        doc[top] = top_value
    check_table(outcome(scales.read, put("fuzz_scales.json", json.dumps(doc))))


@pytest.mark.parametrize(
    "text",
    [
        '{"format": "calibkit-scales", "tensors": {"x": {"amax": 1' + "0" * 400 + "}}}",  # int amax beyond float
        '{"format": "calibkit-scales", "tensors": {"x": {"amax": 1' + "0" * 5000 + "}}}",  # beyond int digit limit
        '{"format": "calibkit-scales", "tensors": {"x": {"amax": 2.5, "clipped": "lots"}}}',
        '{"format": "calibkit-scales", "tensors": {"x": {"amax": 2.5, "nan": NaN}}, "model": {"fp": NaN}}',
        "[" * 100000,
    ],
)
def test_scales_regressions(text):
    check_table(outcome(scales.read, put("regress_scales.json", text)))


# --------------------------------------------------------------------------- preprocess.json
def check_pre(p: Preprocess | None) -> None:
    if p is None:
        return
    n = 1 if p.channels == "L" else 3
    assert p.layout in ("NCHW", "NHWC") and p.channels in ("RGB", "BGR", "L")
    for v in (*p.mean, *p.std, p.scale):
        assert isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    assert len(p.mean) in (1, n) and len(p.std) in (1, n) and all(s != 0 for s in p.std)
    assert p.size is None or (len(p.size) == 2 and all(isinstance(v, int) and v > 0 for v in p.size))
    assert p.resize is None or (isinstance(p.resize, int) and p.resize > 0)
    assert Preprocess.from_dict(p.to_dict()) == p
    json.dumps(p.to_dict(), allow_nan=False)


@fuzz(200)
@given(
    json_values
    | st.dictionaries(
        st.sampled_from(["size", "resize", "scale", "mean", "std", "channels", "layout", "extra"]),
        json_values,
        max_size=4,
    )
)
def test_preprocess_from_dict_json(raw):
    check_pre(outcome(Preprocess.from_dict, raw))


pre_values = st.one_of(
    odd_numbers,
    st.lists(st.one_of(st.integers(-2, 300), st.floats(), st.booleans(), st.text(max_size=2)), max_size=4),
    st.sampled_from(
        [
            "RGB",
            "BGR",
            "L",
            "rgb",
            "NCHW",
            "NHWC",
            [1, 2],
            [224, 224],
            [0.5, 0.5, 0.5],
            [0.5, 0.5],
            [1.0, 0.0, 1.0],
            "224",
        ]
    ),
)


@fuzz(300)
@given(
    st.dictionaries(
        st.sampled_from(["size", "resize", "scale", "mean", "std", "channels", "layout"]),
        pre_values,
        min_size=1,
        max_size=4,
    )
)
def test_preprocess_from_dict_fields(raw):
    check_pre(outcome(Preprocess.from_dict, raw))


@fuzz(150)
@given(st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
def test_preprocess_from_file_bytes(data):
    check_pre(outcome(Preprocess.from_file, put("fuzz_pre.json", data)))


@pytest.mark.parametrize(
    "raw",
    [
        [["size", 1]],
        ["size"],
        5,
        {"size": ["a", "b"]},
        {"size": [1.5, 2]},
        {"size": [True, 3]},
        {"mean": [0.5, 0.5], "channels": "RGB"},
        {"std": "abc"},
        {"std": [1, 0, 1]},
        {"scale": "x"},
        {"mean": [math.nan]},
        {"resize": -3},
        {"resize": "256"},
        {"channels": ["RGB"]},
    ],
)
def test_preprocess_regressions(raw):
    with pytest.raises(CalibkitError) as info:
        Preprocess.from_dict(raw)
    assert "\n" not in str(info.value)


def test_preprocess_null_means_default():
    # Found by fuzzing: {"scale": null} was accepted and crashed (TypeError) when the first image loaded.
    assert Preprocess.from_dict({"scale": None, "mean": None, "channels": None}) == Preprocess()


def test_preprocess_file_not_utf8_or_directory():
    with pytest.raises(CalibkitError, match="not valid"):
        Preprocess.from_file(put("regress_pre.json", b"\xff\xfe{"))
    with pytest.raises(CalibkitError, match="directory"):
        Preprocess.from_file(TMP)
    with pytest.raises(CalibkitError):
        Preprocess.from_file(put("regress_deep.json", "[" * 100000))
