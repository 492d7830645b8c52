"""The demo runs from a built wheel, installed in a fresh virtual environment, from an empty
directory (the model and its data are package data, not files of the clone); and the ONNX
Runtime flavour is the user's choice (extras ``cpu`` / ``gpu``), tested both ways.

The test venvs get their dependencies from the running interpreter's site-packages (no
network), also when it is itself a venv (``--system-site-packages`` would then see the base
interpreter's, without onnx): a .pth in the new venv lists a folder of links to them, after the
venv's own site-packages, where the wheel goes. Links, not the folders themselves, so the ONNX
Runtime flavour can be left out and installed on its own."""

from __future__ import annotations

import email
import os
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ORT = ("onnxruntime", "onnxruntime-gpu")


def _run(cmd, cwd, **kw):
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600, **kw)
    assert r.returncode == 0, (cmd, r.stdout[-2000:], r.stderr[-2000:])
    return r


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT)], dist)
    return next(dist.glob("calibkit-*.whl"))


def _site_dirs() -> list[Path]:
    return [
        Path(p) for p in sys.path if p.rstrip("/").endswith(("site-packages", "dist-packages")) and Path(p).is_dir()
    ]


def _ort_entries(site: Path) -> set[str]:
    """Names in ``site`` that belong to an ONNX Runtime distribution (package, libs, dist-info)."""
    names: set[str] = set()
    for name in ORT:
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        for f in dist.files or []:
            top = Path(str(f)).parts[0]
            if (site / top).exists() and Path(dist.locate_file(top)).parent == site:
                names.add(top)
    return names


def _venv(tmp: Path, wheel: Path, keep_ort: bool) -> Path:
    """A venv with the wheel installed and links to this interpreter's dependencies; without any
    ONNX Runtime unless ``keep_ort``. Returns its python."""
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], tmp)
    py = venv / "bin" / "python"
    own = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp).stdout.strip())
    links = tmp / "deps"
    links.mkdir()
    for site in _site_dirs():
        skip = set() if keep_ort else _ort_entries(site)
        for entry in site.iterdir():
            mine = entry.name.startswith(("calibkit", "__editable__")) or entry.name.endswith(".pth")  # the wheel's
            if entry.name not in skip and not mine and not (links / entry.name).exists():
                (links / entry.name).symlink_to(entry)
    (own / "calibkit-test-deps.pth").write_text(f"{links}\n")
    _run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--force-reinstall", str(wheel)], tmp)
    return py


def _demo(py: Path, tmp: Path) -> subprocess.CompletedProcess:
    empty = tmp / "empty"
    empty.mkdir(exist_ok=True)
    return subprocess.run(
        [str(py.parent / "calibkit"), "calibrate"], cwd=empty, capture_output=True, text=True, timeout=600, env=_env()
    )


def test_wheel_runs_the_bare_demo(wheel, tmp_path):
    py = _venv(tmp_path, wheel, keep_ort=True)
    venv = py.parent.parent
    empty = tmp_path / "empty"
    empty.mkdir()
    where = _run(
        [str(py), "-c", "import calibkit, calibkit.demo as d; print(calibkit.__file__); print(d.available())"],
        empty,
        env=_env(),
    ).stdout.split()
    assert str(venv) in where[0] and where[1] == "True", where
    r = _run([str(venv / "bin" / "calibkit"), "calibrate"], empty, env=_env())
    assert "wrote scales" in r.stdout and "both onnxruntime" not in r.stderr
    # the calibration images come from calibration_data/ (linked into the package): all 300 shipped
    assert "300" in r.stdout
    assert (empty / "calibkit-demo" / "digits_cnn.cache").is_file() and (
        empty / "calibkit-demo" / "scales.json"
    ).is_file()
    r = _run([str(venv / "bin" / "calibkit"), "validate", "--backends", "ort-int8"], empty, env=_env())
    assert (empty / "calibkit-demo" / "report.html").is_file()


def test_the_onnxruntime_flavour_is_an_extra(wheel):
    with zipfile.ZipFile(wheel) as z:
        meta = email.message_from_bytes(z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))))
    reqs = [r.replace(" ", "") for r in meta.get_all("Requires-Dist")]
    assert not [r for r in reqs if r.startswith("onnxruntime") and "extra==" not in r], reqs  # no flavour forced
    assert 'onnxruntime>=1.31;extra=="cpu"' in reqs and 'onnxruntime-gpu>=1.31;extra=="gpu"' in reqs, reqs
    assert {"cpu", "gpu", "test", "test-gpu"} <= set(meta.get_all("Provides-Extra"))


def _other_flavour(tmp: Path) -> tuple[str, Path]:
    """(name, wheel) of the ONNX Runtime flavour this interpreter does not have (the newest
    release calibkit accepts: the two flavours are not always released at the same versions),
    downloaded once into ~/.cache/calibkit/ort-wheels (or $CALIBKIT_ORT_WHEELS)."""
    have = [n for n in ORT if _installed(n)]
    if len(have) != 1:
        pytest.skip(f"this environment has {have or 'no ONNX Runtime'}; the flavour test needs exactly one")
    other = ORT[1 - ORT.index(have[0])]
    cache = Path(os.environ.get("CALIBKIT_ORT_WHEELS", Path.home() / ".cache" / "calibkit" / "ort-wheels"))
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    pattern = f"{other.replace('-', '_')}-*-{tag}-*.whl"
    found = sorted(cache.glob(pattern))
    if not found:
        if os.environ.get("CALIBKIT_OFFLINE") or os.environ.get("PIP_NO_INDEX"):
            pytest.skip(f"offline: no {other} wheel for {tag} in {cache}")
        cache.mkdir(parents=True, exist_ok=True)
        _run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", f"{other}>=1.31", "-d", str(cache)], tmp)
        found = sorted(cache.glob(pattern))
    return other, found[-1]


def _installed(name: str) -> bool:
    try:
        metadata.distribution(name)
        return True
    except metadata.PackageNotFoundError:
        return False


def test_each_flavour_runs_alone_none_is_an_error_both_a_warning(wheel, tmp_path):
    other, other_wheel = _other_flavour(tmp_path)
    py = _venv(tmp_path, wheel, keep_ort=False)
    # none: one line naming both extras, no traceback
    r = _demo(py, tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip() == (
        "calibkit: error: ONNX Runtime is not installed; install exactly one flavour: "
        "pip install 'calibkit[cpu]' (CPU) or 'calibkit[gpu]' (NVIDIA GPU with CUDA 12)"
    )
    # the other flavour alone (the venv's own copy): it is the one that runs, and the demo works
    _run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(other_wheel)], tmp_path)
    probe = "import onnxruntime as o, importlib.metadata as m; print(o.__file__); print(m.version(" + repr(other) + "))"
    where = _run([str(py), "-c", probe], tmp_path, env=_env()).stdout.split()
    assert str(py.parent.parent) in where[0], where
    r = _demo(py, tmp_path)
    assert r.returncode == 0 and "wrote scales" in r.stdout and "both onnxruntime" not in r.stderr, r.stderr
    gpu_build = _run([str(py), "-c", "import onnxruntime as o; print(o.get_device())"], tmp_path, env=_env()).stdout
    assert ("GPU" in gpu_build) == (other == "onnxruntime-gpu"), gpu_build
    # both installed: the CLI warns, naming the way out, and still runs
    deps = tmp_path / "deps"
    site = next(s for s in _site_dirs() if _ort_entries(s))
    for entry in _ort_entries(site):
        if entry.endswith(".dist-info") and not (deps / entry).exists():
            (deps / entry).symlink_to(site / entry)
    r = _demo(py, tmp_path)
    assert r.returncode == 0, r.stderr
    assert "calibkit: warning: both onnxruntime and onnxruntime-gpu are installed" in r.stderr
    assert "pip uninstall -y onnxruntime onnxruntime-gpu" in r.stderr
