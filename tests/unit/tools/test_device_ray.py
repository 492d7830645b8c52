"""tools/device_ray.py: the bundle's parts join back into the same wheels, and the install
prefix it prints installs them with pip into a fresh --target and runs its requirement check
(small wheels made here stand in for Ray and its dependencies; no download)."""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "tools"))
import device_ray  # noqa: E402


def wheel(dest: Path, name: str, version: str, requires: tuple[str, ...] = (), pad: int = 0) -> Path:
    """A minimal pure-Python wheel pip installs: package ``name`` with __version__ (``pad``
    bytes of incompressible data make it span several parts)."""
    mod = name.replace("-", "_")
    dist = f"{mod}-{version}.dist-info"
    files = {
        f"{mod}/__init__.py": f"__version__ = {version!r}\n".encode(),
        f"{mod}/blob.bin": hashlib.shake_256(name.encode()).digest(pad) if pad else b"",
        f"{dist}/METADATA": (
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
            + "".join(f"Requires-Dist: {r}\n" for r in requires)
        ).encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }

    def row(path: str, data: bytes) -> str:
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        return f"{path},sha256={digest},{len(data)}\n"

    record = "".join(row(p, d) for p, d in files.items()) + f"{dist}/RECORD,,\n"
    out = dest / f"{mod}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for p, d in files.items():
            z.writestr(p, d)
        z.writestr(f"{dist}/RECORD", record)
    return out


@pytest.fixture
def staged(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    wheels = [
        wheel(
            src,
            "ray",
            "9.9.9",
            ("depa>=1.0", "depb", 'depc; extra == "serve"', 'depd; python_version < "3.0"'),
            pad=5000,
        ),
        wheel(src, "depa", "1.2"),
        wheel(src, "depb", "0.1", pad=3000),
    ]
    stage = tmp_path / "stage"
    (tmp_path / "det.onnx").write_bytes(hashlib.shake_256(b"model").digest(1500))
    digest = device_ray.make_bundle(wheels, tmp_path / "bundle.tar", {"models/det.onnx": tmp_path / "det.onnx"})
    parts = device_ray.split(tmp_path / "bundle.tar", 2048, stage)
    return tmp_path, wheels, digest, parts


def device_copy(tmp_path: Path, parts: list[Path]) -> Path:
    """What the copy calls do, run here: each printed command from a root holding its carry."""
    at = tmp_path / "dev-parts"
    for p in parts:
        cmd, carry = device_ray.copy_command(p, tmp_path, parts_at=str(at))
        assert carry == [p.parent.relative_to(tmp_path).as_posix()] and carry[0] == f"stage/{p.parent.name}"
        subprocess.run(["bash", "-c", cmd], cwd=tmp_path, check=True, capture_output=True)
    return at


def install(tmp_path: Path, digest: str, at: Path, env_path: str = "") -> subprocess.CompletedProcess:
    cmd = device_ray.install_command(
        digest, str(at), str(tmp_path / "wheels"), str(tmp_path / "site"), python=shlex_quote(sys.executable)
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": env_path}
    return subprocess.run(["bash", "-c", cmd], cwd=REPO, capture_output=True, text=True, env=env)


def shlex_quote(s: str) -> str:
    import shlex

    return shlex.quote(s)


def test_parts_join_into_identical_wheels_and_install_into_a_fresh_target(staged):
    tmp_path, wheels, digest, parts = staged
    total = (tmp_path / "bundle.tar").stat().st_size
    sizes = [p.stat().st_size for p in parts]
    assert len(parts) == -(-total // 2048) >= 5 and sum(sizes) == total  # as few as will do
    assert max(sizes) <= 2048 and len(set(sizes[:-1])) == 1 and sizes[-1] <= sizes[0]  # of one size
    assert [p.name for p in parts] == [f"bundle.part{k:02d}" for k in range(len(parts))]
    at = device_copy(tmp_path, parts)
    proc = install(tmp_path, digest, at)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    site = tmp_path / "site"
    assert f"ray 9.9.9 from {site}/ray: requirements met" in proc.stdout
    for w in wheels:  # byte-identical after the round trip
        assert (tmp_path / "wheels" / w.name).read_bytes() == w.read_bytes()
    assert (site / "depb" / "blob.bin").read_bytes() == hashlib.shake_256(b"depb").digest(3000)
    assert (site / "ray" / "__init__.py").read_text() == "__version__ = '9.9.9'\n"
    assert (tmp_path / "wheels" / "models" / "det.onnx").read_bytes() == (tmp_path / "det.onnx").read_bytes()
    again = install(tmp_path, digest, at)  # installed: only the check runs
    assert again.returncode == 0 and "requirements met" in again.stdout


def test_a_missing_part_is_named_and_nothing_installed(staged):
    tmp_path, _, digest, parts = staged
    at = device_copy(tmp_path, parts)
    (at / parts[2].name).unlink()
    proc = install(tmp_path, digest, at)
    assert proc.returncode == 3
    assert "bundle incomplete: have" in proc.stdout and parts[1].name in proc.stdout
    assert parts[2].name not in proc.stdout and not (tmp_path / "site").exists()


def test_check_names_an_unmet_requirement(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    wheels = [wheel(src, "ray", "9.9.9", ("depa>=1.0", "depb")), wheel(src, "depa", "0.5")]
    digest = device_ray.make_bundle(wheels, tmp_path / "bundle.tar")
    at = device_copy(tmp_path, device_ray.split(tmp_path / "bundle.tar", 1 << 20, tmp_path / "stage"))
    proc = install(tmp_path, digest, at)
    assert proc.returncode == 3
    assert "depa 0.5 does not meet depa>=1.0" in proc.stdout and "depb (depb) is not installed" in proc.stdout
    # the machine's own packages count: depb found further down PYTHONPATH
    other = tmp_path / "machine"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--no-deps",
            "--target",
            str(other),
            str(wheel(src, "depb", "0.1")),
        ],
        check=True,
        capture_output=True,
    )
    proc = install(tmp_path, digest, at, env_path=str(other))
    assert proc.returncode == 3 and "depb" not in proc.stdout and "depa 0.5 does not meet" in proc.stdout


def test_bundle_bytes_depend_only_on_the_wheels(tmp_path, staged):
    base, wheels, digest, _ = staged
    copies = tmp_path / "copies"
    copies.mkdir()
    moved = [Path(shutil.copy(w, copies / w.name)) for w in reversed(wheels)]  # other folder, order, mtimes
    model = {"models/det.onnx": Path(shutil.copy(base / "det.onnx", copies / "other-name.onnx"))}
    assert device_ray.make_bundle(moved, tmp_path / "again.tar", model) == digest
    assert device_ray.make_bundle(moved, tmp_path / "without.tar") != digest


def test_split_drops_parts_of_an_earlier_longer_bundle(staged):
    tmp_path, _, _, parts = staged
    assert (tmp_path / "stage" / "p04").is_dir()
    fewer = device_ray.split(tmp_path / "bundle.tar", 1 << 20, tmp_path / "stage")
    assert [p.relative_to(tmp_path).as_posix() for p in fewer] == ["stage/p00/bundle.part00"]
    assert sorted(d.name for d in (tmp_path / "stage").iterdir()) == ["p00"]
