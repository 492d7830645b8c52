"""calibkit.trt against the exact pybind11 signatures of TensorRT 10.16.1.11 and 11.4.0.106.

CI: the committed table tests/unit/trt/trt_signatures.json (made by tools/trt_signatures.py
from the tensorrt-cu12-bindings / tensorrt-cu13-bindings wheels, imported against empty
stand-in libraries; no TensorRT ran) and an ``ast`` walk of every module of calibkit/trt: each
``trt.*`` name, each method call on a TensorRT object (arity, keyword names), each property
read or assignment and each calibrator override (name, parameters TensorRT passes) must exist
in every version the module lists in TRT_MAJORS. ``test_live_bindings_match_the_table`` imports
the wheels the same way when they, gcc and nm are here, and skips with the reason otherwise.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import trt_api

ROOT = Path(__file__).resolve().parents[3]
TRT_DIR = ROOT / "calibkit" / "trt"


@pytest.fixture(scope="module")
def apis() -> dict[int, trt_api.Api]:
    return trt_api.load()


def test_calibkit_trt_conforms_to_each_targeted_version(apis):
    errors, checked = [], 0
    for path in sorted(TRT_DIR.glob("*.py")):
        findings, problems = trt_api.check_source(path.read_text(), apis, path.name)
        checked += len(findings)
        errors += problems
    assert not errors, "\n".join(errors)
    assert checked > 120  # the walk really sees calibkit's TensorRT calls


def test_every_calibrator_override_is_checked(apis):
    findings, _ = trt_api.check_source((TRT_DIR / "calibrators.py").read_text(), apis, "calibrators.py")
    seen = {f.what.split("(")[0].split(".")[-1] for f in findings if "overrides" in f.what}
    assert seen >= {
        "get_batch",
        "get_batch_size",
        "read_calibration_cache",
        "write_calibration_cache",
        "get_quantile",
        "get_regression_cutoff",
        "read_histogram_cache",
        "write_histogram_cache",
    }


def test_modules_target_the_right_versions():
    majors = {p.stem: trt_api.majors_of(p.read_text()) for p in TRT_DIR.glob("*.py")}
    assert majors["calibrators"] == (10,) and majors["build10"] == (10,)
    assert majors["build11"] == (11,) and majors["common"] == (10, 11) and majors["runner"] == (10, 11)


def test_table_knows_the_version_differences(apis):
    a10, a11 = apis[10], apis[11]
    assert a10.version == "10.16.1.11" and a11.version == "11.4.0.106"
    for cls in ("IInt8EntropyCalibrator2", "IInt8LegacyCalibrator", "IInt8MinMaxCalibrator"):
        assert cls in a10.classes and cls not in a11.classes
    assert "FP16" in a10.classes["BuilderFlag"]["members"] and "FP16" not in a11.classes["BuilderFlag"]["members"]
    assert a10.prop("IBuilderConfig", "int8_calibrator") and not a11.prop("IBuilderConfig", "int8_calibrator")
    for a in (a10, a11):
        assert [p["name"] for p in a.methods("IBuilderConfig", "set_timing_cache")[0]["params"]] == [
            "cache",
            "ignore_mismatch",
        ]
        assert a.methods("IBuilderConfig", "set_timing_cache")[0]["returns"] == "bool"
        assert a.prop("ILayer", "metadata")["writable"]
        assert set(a.classes["LayerInformationFormat"]["members"]) >= {"JSON", "ONELINE"}
        assert "DETAILED" in a.classes["ProfilingVerbosity"]["members"]
    assert a10.prop("ILayer", "precision")["writable"] and a11.prop("ILayer", "precision") is None
    assert a10.methods("ITensor", "set_dynamic_range") and a11.methods("ITensor", "set_dynamic_range") is None
    legacy = a10.overridable("IInt8LegacyCalibrator")
    assert legacy["read_histogram_cache"] == ["length"] and legacy["write_histogram_cache"] == ["ptr", "length"]
    assert legacy["get_batch"] == ["names"] and legacy["write_calibration_cache"] == ["cache"]
    assert "get_quantile" not in a10.overridable("IInt8EntropyCalibrator2")


SNIPPETS = {
    "11 has no calibrators": (
        "TRT_MAJORS = (11,)\nimport tensorrt as trt\nclass C(trt.IInt8EntropyCalibrator2):\n    pass\n",
        "no trt.IInt8EntropyCalibrator2",
    ),
    "11 has no FP16 flag": (
        "TRT_MAJORS = (11,)\ndef f(config):\n    import tensorrt as trt\n    config.set_flag(trt.BuilderFlag.FP16)\n",
        "'FP16'",
    ),
    "no such method": (
        "TRT_MAJORS = (10,)\ndef f(network):\n    network.no_such_method_xyz()\n",
        "no method 'no_such_method_xyz'",
    ),
    "11 has no int8_calibrator": (
        "TRT_MAJORS = (10, 11)\ndef f(config, c):\n    config.int8_calibrator = c\n",
        "no property 'int8_calibrator'",
    ),
    "read-only property": ("TRT_MAJORS = (10,)\ndef f(layer):\n    layer.num_outputs = 3\n", "read-only"),
    "too few arguments": (
        "TRT_MAJORS = (10,)\ndef f(config, cache):\n    config.set_timing_cache(cache)\n",
        "(cache, ignore_mismatch)",
    ),
    "wrong keyword": (
        "TRT_MAJORS = (10,)\ndef f(tensor):\n    tensor.set_dynamic_range(lo=-1.0, hi=1.0)\n",
        "keywords lo, hi",
    ),
    "typed through returns": (
        "TRT_MAJORS = (10,)\ndef f(network):\n    t = network.get_layer(0).get_output(0)\n    t.set_dynamic_range(1.0)\n",
        "(min, max)",
    ),
    "wrong override name": (
        "TRT_MAJORS = (10,)\nimport tensorrt as trt\nclass C(trt.IInt8MinMaxCalibrator):\n    def get_batches(self, names):\n        return None\n",
        "never calls get_batches",
    ),
    "wrong override arity": (
        "TRT_MAJORS = (10,)\nimport tensorrt as trt\nclass C(trt.IInt8EntropyCalibrator2):\n    def get_batch(self):\n        return None\n",
        "calls get_batch(names)",
    ),
    "legacy histogram arity (the old calibkit bug)": (
        "TRT_MAJORS = (10,)\nimport tensorrt as trt\nclass M:\n    def read_histogram_cache(self):\n        return None\n"
        "class C(M, trt.IInt8LegacyCalibrator):\n    pass\n",
        "calls read_histogram_cache(length)",
    ),
    "legacy-only method on entropy": (
        "TRT_MAJORS = (10,)\nimport tensorrt as trt\nclass C(trt.IInt8EntropyCalibrator2):\n    def get_quantile(self):\n        return 0.9\n",
        "never calls get_quantile",
    ),
    "undeclared target": ("def f():\n    import tensorrt as trt\n    trt.Builder(None)\n", "TRT_MAJORS"),
}


@pytest.mark.parametrize("case", sorted(SNIPPETS))
def test_checker_can_fail(apis, case):
    src, expect = SNIPPETS[case]
    _, errors = trt_api.check_source(src, apis)
    assert errors and any(expect in e for e in errors), errors


def test_checker_passes_valid_snippet(apis):
    src = (
        "TRT_MAJORS = (10,)\ndef f(config, network):\n    import tensorrt as trt\n"
        "    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 1 << 20)\n"
        "    ok = config.set_timing_cache(config.create_timing_cache(b''), False)\n"
        "    network.get_layer(0).get_output(0).set_dynamic_range(-1.0, 1.0)\n"
    )
    findings, errors = trt_api.check_source(src, apis)
    assert errors == [] and len(findings) >= 8


def test_build10_would_fail_against_11(apis):
    src = (TRT_DIR / "build10.py").read_text().replace("TRT_MAJORS = (10,)", "TRT_MAJORS = (11,)")
    text = "\n".join(trt_api.check_source(src, apis, "build10.py")[1])
    for name in ("'FP16'", "'int8_calibrator'", "'set_calibration_profile'", "'OBEY_PRECISION_CONSTRAINTS'"):
        assert name in text, name


def _live_reason() -> str | None:
    wheels = Path.home() / ".cache" / "calibkit" / "trt-wheels"
    for name in ("tensorrt_cu12_bindings-10.16.1.11", "tensorrt_cu13_bindings-11.4.0.106"):
        if not list(wheels.glob(f"{name}-*.whl")):
            return (
                f"{name} wheel not in {wheels} (pip download --no-deps it there, or run tools/trt_signatures.py online)"
            )
    for tool in ("gcc", "nm"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed: it builds the stand-in libraries the bindings import against"
    return None


@pytest.mark.skipif(_live_reason() is not None, reason=str(_live_reason()))
def test_live_bindings_match_the_table(tmp_path, apis):
    """Import the real bindings against empty stand-ins (no TensorRT runs) and check calibkit
    against what they say now; the committed table must equal it."""
    out = tmp_path / "live.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "trt_signatures.py"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0 and "cannot open shared object" in proc.stderr:
        pytest.skip(f"the bindings do not import against stand-ins here: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stderr
    live = trt_api.load(out)
    assert out.read_text() == trt_api.TABLE.read_text(), (
        "the committed table is stale: run python tools/trt_signatures.py"
    )
    errors = []
    for path in sorted(TRT_DIR.glob("*.py")):
        errors += trt_api.check_source(path.read_text(), live, path.name)[1]
    assert not errors, "\n".join(errors)
