"""Fuzz the data sources, the feeder and the CLI options: a valid result or a one-line CalibkitError.

Derandomized (CI is deterministic), no example database. Examples per property:

* open_source + run_batches, arbitrary bytes (.npz/.npy) ......... 100
* open_source + run_batches, odd arrays in .npz/.npy ............. 150
* IterableSource + feed.run_batches, arbitrary python values ..... 200
* CLI calibrate --histograms, random method/trt/cache options .... 25
* CLI calibrate --data, random data/preprocessing options ........ 15
* CLI validate, random backends/gates/exclude-nodes/options ...... 8
* CLI export-qdq, random --exclude-nodes/--exclude-op-types ...... 20
* CLI inspect/merge on random bytes .............................. 40

Plus plain regression tests for every bug the fuzzer found.
"""

from __future__ import annotations

import io
import tempfile
import zipfile
from itertools import count
from pathlib import Path

import models
import numpy as np
import pytest
from click.testing import CliRunner
from fuzz_common import fuzz, note, outcome  # noqa: E402,F401
from hypothesis import given
from hypothesis import strategies as st

from calibkit.cli.commands import cli
from calibkit.data import IterableSource, open_source
from calibkit.data.feed import FeedStats, run_batches
from calibkit.errors import CalibkitError
from calibkit.graph.model import input_specs, load

TMP = Path(tempfile.mkdtemp(prefix="calibkit-fuzz-cli-"))
MODEL = models.conv_net(TMP / "conv.onnx", hw=4)
TWO = models.two_input_net(TMP / "two.onnx")
SPECS = {"conv": input_specs(load(MODEL)), "two": input_specs(load(TWO))}
DATA = TMP / "calib.npz"
np.savez(DATA, x=np.random.default_rng(1).normal(0, 1, (6, 3, 4, 4)).astype(np.float32))
SEQ = count()


def feed_all(source_fn, specs, batch: int = 4):
    """Open a source and run the feeder over it; check every batch it yields."""

    def run():
        source = source_fn()
        stats = FeedStats()
        for feed in run_batches(source, specs, batch, stats):
            assert sorted(feed) == sorted(s.name for s in specs)
            n = {len(v) for v in feed.values()}
            assert len(n) == 1 and 0 < n.pop() <= batch
            for s in specs:
                assert feed[s.name].dtype == s.dtype and feed[s.name].ndim == len(s.shape)
        assert stats.samples > 0
        return stats

    return outcome(run)


# --------------------------------------------------------------------------- .npz / .npy sources
def _npy(a: np.ndarray, fortran: bool = False) -> bytes:
    b = io.BytesIO()
    np.lib.format.write_array(b, np.asfortranarray(a) if fortran else a, allow_pickle=a.dtype.hasobject)
    return b.getvalue()


def _write(kind: str, arrays: dict[str, bytes]) -> Path:
    p = TMP / f"d{next(SEQ)}.{kind}"
    if kind == "npy":
        p.write_bytes(next(iter(arrays.values())))
    else:
        with zipfile.ZipFile(p, "w") as zf:
            for k, v in arrays.items():
                zf.writestr(k + ".npy", v)
    return p


@fuzz(100)
@given(
    st.sampled_from(["npz", "npy"]),
    st.sampled_from(["conv", "two"]),
    st.binary(max_size=300)
    | st.binary(max_size=60).map(lambda b: _npy(np.zeros((2, 3, 4, 4), np.float32))[: len(b) + 20] + b),
)
def test_source_arbitrary_bytes(kind, model, data):
    p = TMP / f"raw{next(SEQ)}.{kind}"
    p.write_bytes(data)
    feed_all(lambda: open_source(p, SPECS[model]), SPECS[model])


dtypes = st.sampled_from(["f4", "f8", "f2", "i8", "u1", "bool", "c8", "U3", "S2", "O", "m8[s]", "V4", [("a", "f4")]])
shapes = st.one_of(
    st.sampled_from(
        [(), (0,), (0, 3, 4, 4), (2, 3, 4, 4), (5, 3, 4, 4), (2, 4), (3, 4), (3, 1), (2, 3, 4, 5), (1, 3, 4, 4, 1)]
    ),
    st.lists(st.integers(0, 5), max_size=5).map(tuple),
)
valid_members = {  # arrays each model accepts, to mutate from
    "conv": st.tuples(
        st.just("x"), st.sampled_from(["f4", "f8", "f2"]), st.integers(1, 9).map(lambda n: (n, 3, 4, 4)), st.booleans()
    ),
    "two": st.tuples(
        st.sampled_from(["a", "b", "idx"]),
        st.sampled_from(["f4", "i8", "i4", "u1"]),
        st.sampled_from([(3, 4), (3, 1), (4, 4)]),
        st.booleans(),
    ),
}


def _array(dtype, shape) -> np.ndarray:
    a = np.zeros(shape, dtype=dtype)
    if a.dtype.kind in "fc" and a.size:
        a.flat[0] = np.nan
    return a


@fuzz(150)
@given(st.data(), st.sampled_from(["npz", "npy"]), st.sampled_from(["conv", "two"]), st.integers(1, 7))
def test_source_odd_arrays(data, kind, model, batch):
    odd = st.tuples(st.sampled_from(["x", "a", "b", "idx", "y", "x.npy", "dir/x"]), dtypes, shapes, st.booleans())
    members = data.draw(st.lists(valid_members[model] | odd, min_size=1, max_size=3))
    arrays = {name: _npy(_array(dt, shape), fortran) for name, dt, shape, fortran in members}
    p = _write(kind, arrays)
    feed_all(lambda: open_source(p, SPECS[model]), SPECS[model], batch)


# --------------------------------------------------------------------------- loader results
py_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.floats(),
    st.text(max_size=3),
    st.sampled_from(
        [
            np.float32(1.0),
            np.zeros(()),
            np.zeros((2, 3, 4, 4), np.float32),
            np.zeros((2, 3, 4, 4), "U1"),
            np.zeros((2, 3, 4, 4), object),
            np.zeros((0, 3, 4, 4), np.float32),
            np.zeros((2, 4), np.float32),
            np.ones((2, 1), np.int64),
            np.zeros((3, 4), np.float64),
            np.zeros((2, 4), "c8"),
        ]
    ),
)
py_values = st.recursive(
    py_leaf,
    lambda kids: (
        st.lists(kids, max_size=3) | st.dictionaries(st.sampled_from(["x", "a", "b", "idx", "z"]), kids, max_size=3)
    ),
    max_leaves=8,
)


valid_feeds = st.sampled_from(
    [
        {"x": np.ones((2, 3, 4, 4), np.float32)},
        {"x": np.ones((3, 3, 4, 4), np.float64)},
        {"x": np.zeros((0, 3, 4, 4), np.float32)},
        {"a": np.ones((2, 4), np.float32), "b": np.ones((2, 4), np.float32), "idx": np.ones((2, 1), np.int32)},
        {"a": [[1.0] * 4], "b": [[0.5] * 4], "idx": [[1]]},
    ]
)


@fuzz(200)
@given(st.sampled_from(["conv", "two"]), st.lists(valid_feeds | py_values, min_size=0, max_size=3), st.integers(1, 5))
def test_iterable_source_values(model, items, batch):
    feed_all(lambda: IterableSource(items), SPECS[model], batch)


# --------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def calibrated() -> Path:
    out = TMP / "calibrated"
    res = CliRunner().invoke(cli, ["calibrate", str(MODEL), "--data", str(DATA), "-o", str(out), "--method", "minmax"])
    assert res.exit_code == 0, res.output
    return out


def invoke(args: list[str]):
    res = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=True)
    shown = f"args {args!r}\nexit {res.exit_code}\noutput:\n{res.output}"
    assert res.exception is None or isinstance(res.exception, SystemExit), f"{shown}\ntraceback: {res.exc_info}"
    assert res.exit_code in (0, 1, 2, 3), shown
    note(f"exit {res.exit_code}")
    if res.exit_code == 1:
        errors = [line for line in res.stderr.splitlines() if line.startswith("calibkit: error: ")]
        assert len(errors) == 1 and res.stderr.rstrip().splitlines()[-1] == errors[0].rstrip(), shown
    return res


def opt(name: str, values) -> st.SearchStrategy:
    return st.one_of(st.just([]), values.map(lambda v: [name, v]))


junk = st.text(max_size=8)
numbers = st.sampled_from(
    ["0", "-1", "1", "nan", "inf", "-inf", "1e400", "99.99", "abc", "", "2.5", "128", "2048", "100000000000000000000"]
)
method_specs = st.one_of(
    st.sampled_from(
        [
            "entropy",
            "minmax",
            "mse",
            "percentile",
            "percentile:abc",
            "percentile:nan",
            "percentile:0",
            "percentile:100",
            "entropy:levels=-3",
            "entropy:levels=2048,start_bin=2048",
            "entropy:foo=1",
            "mse:start_bin=0",
            "minmax:1",
            ":",
            "percentile:",
            "entropy:levels=1e3",
            "",
            " ",
            "percentile:99.9,",
        ]
    ),
    st.builds(lambda m, a: f"{m}:{a}", st.sampled_from(["entropy", "percentile", "mse", "minmax"]), junk),
    junk,
)
versions = (
    st.sampled_from(
        ["10.16.1", "8.6.1", "4.0", "100.1", "10", "10.x", "", " 10.1 ", "9" * 5000, "10.100.1", "\u0661\u0660.1"]
    )
    | junk
)
algorithms = (
    st.sampled_from(
        ["EntropyCalibration2", "MinMaxCalibration", "LegacyCalibration", "Entropy", "", "a b", "EntropyCalibration2\n"]
    )
    | junk
)
floats_csv = (
    st.sampled_from(
        [
            "2.7,4",
            "0.5",
            "0.5,0.5,0.5",
            "1,2",
            "nan",
            "inf,1,1",
            "0",
            "0,0,0",
            "",
            ",",
            "a",
            "1e400",
            "224,224",
            "4,4",
            "-4,4",
            "nan,4",
            "inf,4",
            "0.5,0.5",
            "1e400,4",
        ]
    )
    | junk
)


@fuzz(25)
@given(
    st.lists(
        st.one_of(
            opt("--method", method_specs),
            opt("--percentile", numbers),
            opt("--levels", numbers),
            opt("--start-bin", numbers),
            opt("--trt-version", versions),
            opt("--cache-algorithm", algorithms),
            opt("--batch-size", numbers),
        ),
        max_size=4,
    ).map(lambda xs: [a for x in xs for a in x]),
)
def test_cli_calibrate_rethreshold(calibrated, extra):
    invoke(["calibrate", MODEL, "--histograms", calibrated / "histograms.npz", "-o", TMP / f"out{next(SEQ)}", *extra])


@fuzz(15)
@given(
    st.lists(
        st.one_of(
            opt("--batch-size", numbers),
            opt("--size", floats_csv),
            opt("--mean", floats_csv),
            opt("--std", floats_csv),
            opt("--scale", numbers),
            opt("--resize", numbers),
            opt("--channels", st.sampled_from(["RGB", "L", "rgb", ""])),
            opt("--layout", st.sampled_from(["NCHW", "NHWC", "x"])),
            opt("--preprocess", st.sampled_from([str(DATA), str(TMP), "missing.json"])),
            opt("--device", st.sampled_from(["cpu", "gpu"])),
            opt("--data", st.sampled_from([str(DATA), str(TMP), str(MODEL), "missing.npz", "x.py:fn", ""])),
        ),
        max_size=4,
    ).map(lambda xs: [a for x in xs for a in x]),
)
def test_cli_calibrate_data(extra):
    if "--data" not in extra:
        extra = ["--data", DATA, *extra]
    invoke(["calibrate", MODEL, "-o", TMP / f"out{next(SEQ)}", "--method", "minmax", "--recollect", *extra])


@fuzz(8)
@given(
    st.sampled_from(["nope", "trt-int8", "trt-fp16,nope", ",", "", "ort-int8,bad", "ORT-FP32", "ort-fp32"]) | junk,
    st.lists(
        st.one_of(
            opt("--min-cosine", numbers),
            opt("--min-sqnr", numbers),
            opt("--max-accuracy-drop", numbers),
            opt("--fallback-sqnr", numbers),
            opt("--exclude-nodes", st.sampled_from(["(", "[a-", "*", "conv1", "nomatch", "", "a{2,1}"])),
            opt("--batch-size", numbers),
            opt("--labels", st.sampled_from([str(DATA), str(MODEL), "missing.npy"])),
            opt("--metric", st.sampled_from(["x.py", "m.py:fn", ""])),
        ),
        max_size=3,
    ).map(lambda xs: [a for x in xs for a in x]),
)
def test_cli_validate(calibrated, backends, extra):
    # Backends are mostly ones that cannot run here: a real validation renders a report (~2 s).
    n = next(SEQ)
    invoke(
        [
            "validate",
            MODEL,
            "--scales",
            calibrated / "scales.json",
            "--data",
            DATA,
            "--report",
            TMP / f"r{n}.html",
            "--results",
            TMP / f"r{n}.json",
            "--backends",
            backends,
            *extra,
        ]
    )


@fuzz(20)
@given(
    st.sampled_from(["(", "[a-", "*", "conv1", "nomatch", "", "a{2,1}", "(?P<x", "\\", ".*"]) | junk,
    st.sampled_from(["", "Gemm", "Conv,Gemm", ",", "Nope", " Conv "]) | junk,
    st.sampled_from(["trt", "ort", "x"]),
)
def test_cli_export_qdq(calibrated, exclude_nodes, exclude_ops, placement):
    invoke(
        [
            "export-qdq",
            MODEL,
            "--scales",
            calibrated / "scales.json",
            "-o",
            TMP / f"q{next(SEQ)}.onnx",
            "--exclude-nodes",
            exclude_nodes,
            "--exclude-op-types",
            exclude_ops,
            "--placement",
            placement,
        ]
    )


@fuzz(40)
@given(
    st.sampled_from(["inspect", "merge"]),
    st.sampled_from([".cache", ".json", ".npz", ".onnx", ""]),
    st.binary(max_size=200),
)
def test_cli_inspect_merge_bytes(calibrated, command, suffix, data):
    p = TMP / f"in{next(SEQ)}{suffix}"
    p.write_bytes(data)
    args = (
        ["inspect", p]
        if command == "inspect"
        else ["merge", p, calibrated / "histograms.npz", "-o", TMP / f"m{next(SEQ)}.npz"]
    )
    invoke(args)


def test_cli_merge_same_shard_twice(calibrated):
    res = invoke(["merge", calibrated / "histograms.npz", calibrated / "histograms.npz", "-o", TMP / "twice.npz"])
    assert res.exit_code == 1 and "merged once" in res.stderr


# --------------------------------------------------------------------------- regressions
def test_empty_npy_is_a_calibkit_error():
    # Found by fuzzing: np.load on an empty .npy raised EOFError.
    p = TMP / "empty.npy"
    p.write_bytes(b"")
    with pytest.raises(CalibkitError, match="empty"):
        open_source(p, SPECS["conv"])


@pytest.mark.parametrize("item", [None, 3, [np.zeros((1, 3, 4, 4))], "x"])
def test_iterable_yielding_non_dict(item):
    # Found by fuzzing: a loader yielding None raised AttributeError ('NoneType' has no 'items').
    with pytest.raises(CalibkitError, match="expected a dict"):
        list(run_batches(IterableSource([item]), SPECS["conv"], 4, FeedStats()))


def test_iterable_yielding_ragged_list():
    # Found by fuzzing: a ragged list raised ValueError (inhomogeneous shape) from np.asarray.
    with pytest.raises(CalibkitError, match="'x' of item 0 is not an array"):
        list(run_batches(IterableSource([{"x": [[1.0], [1.0, 2.0]]}]), SPECS["conv"], 4, FeedStats()))


@pytest.mark.parametrize("size", ["nan,4", "1e400,4", "inf,4", "2.7,4", "4", "a,b"])
def test_cli_size_not_two_ints(size):
    # Found by a targeted probe of --size: nan raised ValueError, inf/1e400 OverflowError, 2.7 was truncated.
    res = invoke(["calibrate", MODEL, "--data", DATA, "-o", TMP / f"out{next(SEQ)}", "--size", size])
    assert res.exit_code == 1 and "--size" in res.stderr
