"""calibkit.trt against the real TensorRT Python bindings of each version it targets.

Downloads tensorrt-cu12-bindings 10.16.1.11 and tensorrt-cu13-bindings 11.4.0.106 (never
imported), reads their API surface from tensorrt.so, and fails on any trt.* class, method,
property or enum member a module uses that its TRT_MAJORS versions lack, or a calibrator
override with a wrong name or arity. A failed download fails the test unless offline
(CALIBKIT_OFFLINE=1 or PIP_NO_INDEX set): then it skips.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trt_api

TRT_DIR = Path(__file__).resolve().parents[3] / "calibkit" / "trt"


@pytest.fixture(scope="module")
def surfaces() -> dict[int, trt_api.Surface]:
    try:
        return {m: trt_api.surface(m) for m in trt_api.WHEELS}
    except RuntimeError as exc:
        if trt_api.offline():
            pytest.skip(f"offline: {exc}")
        raise


def test_calibkit_trt_conforms_to_each_targeted_version(surfaces):
    errors, checked = [], 0
    for path in sorted(TRT_DIR.glob("*.py")):
        src = path.read_text()
        majors, found = trt_api.uses(src, path.name)
        checked += len(found) * len(majors or ())
        errors += trt_api.check_source(src, surfaces, path.name)
    assert not errors, "\n".join(errors)
    assert checked > 60  # the analysis really sees calibkit's TensorRT calls


def test_modules_target_the_right_versions():
    majors = {p.stem: trt_api.uses(p.read_text(), p.name)[0] for p in TRT_DIR.glob("*.py")}
    assert majors["calibrators"] == (10,) and majors["build10"] == (10,)
    assert majors["build11"] == (11,) and majors["common"] == (10, 11) and majors["runner"] == (10, 11)


def test_surfaces_know_the_version_differences(surfaces):
    s10, s11 = surfaces[10], surfaces[11]
    for name in (
        "IInt8EntropyCalibrator2",
        "IInt8LegacyCalibrator",
        "int8_calibrator",
        "set_calibration_profile",
        "OBEY_PRECISION_CONSTRAINTS",
        "FP16",
    ):
        assert s10.has(name) and not s11.has(name), name
    for name in ("Builder", "OnnxParser", "execute_async_v3", "set_tensor_address", "create_timing_cache", "nptype"):
        assert s10.has(name) and s11.has(name), name
    assert s10.overridable["IInt8LegacyCalibrator"] >= {
        "get_quantile",
        "get_regression_cutoff",
        "read_histogram_cache",
        "write_histogram_cache",
        "get_batch",
    }
    assert "get_quantile" not in s10.overridable["IInt8EntropyCalibrator2"]
    # the arity table agrees with the binary's own docstring examples
    for name in ("get_batch", "read_calibration_cache", "write_calibration_cache"):
        assert s10.doc_arity[name] == trt_api.CALIBRATOR_ARITY[name], name


SNIPPETS = {
    "11 has no calibrators": (
        "TRT_MAJORS = (11,)\nimport tensorrt as trt\nclass C(trt.IInt8EntropyCalibrator2):\n    pass\n",
        "IInt8EntropyCalibrator2",
    ),
    "11 has no FP16 flag": (
        "TRT_MAJORS = (11,)\ndef f(config):\n    import tensorrt as trt\n    config.set_flag(trt.BuilderFlag.FP16)\n",
        "'FP16'",
    ),
    "no such member": (
        "TRT_MAJORS = (10,)\ndef f():\n    import tensorrt as trt\n    b = trt.Builder(None)\n    n = b.create_network(0)\n    n.no_such_method_xyz()\n",
        "no_such_method_xyz",
    ),
    "11 has no int8_calibrator": (
        "TRT_MAJORS = (10, 11)\ndef f(config, c):\n    config.int8_calibrator = c\n",
        "int8_calibrator",
    ),
    "wrong override name": (
        "TRT_MAJORS = (10,)\nimport tensorrt as trt\nclass C(trt.IInt8MinMaxCalibrator):\n    def get_batches(self, names):\n        return None\n",
        "get_batches",
    ),
    "wrong override arity": (
        "TRT_MAJORS = (10,)\nimport tensorrt as trt\nclass C(trt.IInt8EntropyCalibrator2):\n    def get_batch(self):\n        return None\n",
        "argument",
    ),
    "legacy-only method on entropy": (
        "TRT_MAJORS = (10,)\nimport tensorrt as trt\nclass C(trt.IInt8EntropyCalibrator2):\n    def get_quantile(self):\n        return 0.9\n",
        "get_quantile",
    ),
    "undeclared target": ("def f():\n    import tensorrt as trt\n    trt.Builder(None)\n", "TRT_MAJORS"),
}


@pytest.mark.parametrize("case", sorted(SNIPPETS))
def test_checker_can_fail(surfaces, case):
    src, expect = SNIPPETS[case]
    errors = trt_api.check_source(src, surfaces)
    assert errors and any(expect in e for e in errors), errors


def test_checker_passes_valid_snippet(surfaces):
    src = "TRT_MAJORS = (10, 11)\ndef f(config):\n    import tensorrt as trt\n    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 1 << 20)\n"
    assert trt_api.check_source(src, surfaces) == []


def test_build10_would_fail_against_11(surfaces):
    src = (TRT_DIR / "build10.py").read_text().replace("TRT_MAJORS = (10,)", "TRT_MAJORS = (11,)")
    text = "\n".join(trt_api.check_source(src, surfaces, "build10.py"))
    for name in (
        "'FP16'",
        "'int8_calibrator'",
        "'set_calibration_profile'",
        "'precision'",
        "'OBEY_PRECISION_CONSTRAINTS'",
    ):
        assert name in text, name
