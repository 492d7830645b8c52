"""Stage Ray (and onnxruntime-gpu) for the GPU machine, whose calls carry at most 64 MiB each.

    python tools/device_ray.py stage [--with-ort] [--part-mb 55]   download, bundle, split; print the calls
    python tools/device_ray.py calls                                print the calls of the staged bundle again
    python3 tools/device_ray.py check                               on the GPU machine, after the install:
                                                                    Ray's requirements met? import ray

``stage`` (run from anywhere in the repository) downloads into ``.device/ray/wheels/`` the Ray
wheel for CPython 3.12 manylinux x86_64 and the pinned wheels of what Ray needs that the GPU
machine lacks (``NEEDS``), with ``--with-ort`` also onnxruntime-gpu and flatbuffers (the wheel
that ``../shared/tools/device-ortgpu`` downloaded into ``.device/wheels/`` is reused), and the
two PP-OCRv4 models bench/gpu_ray.py calibrates (``models/`` in the bundle; ``--models ''``
leaves them out). They go into one uncompressed tar (sorted names, zeroed times: the same files
give the same bytes) with a ``SHA256SUMS`` of every file, split into as few equal parts as fit
``--part-mb``, ``.device/ray/pNN/bundle.partNN``, one folder per part so that each device call
carries one folder and nothing is copied by hand between calls. ``.device/`` is git-ignored
(``.git/info/exclude``). With the models inside, the last copy call can run the bench too.

The device calls, in order, on one warm machine (it is given back after ~30 s idle; a fresh
one starts empty: then start again from part 00): one call per part copying it to
``/tmp/parts``; every later call begins with the printed install prefix, which checks the
joined bundle against its SHA-256 (a part missing or twice is named), unpacks it, checks every
wheel, installs them with ``pip install --no-index --no-deps --target /tmp/site`` and runs
``check``.

What the GPU machine has (/work/.library/device/KINDS.md, package list of 2026-11-17): click,
filelock, msgpack, protobuf, pyyaml, requests and its dependencies, typing-extensions; it lacks
jsonschema and its own dependencies. ``check`` verifies Ray's every requirement against what
is installed there, so an older package on the machine shows up before a run, not in it.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shlex
import subprocess
import sys
import tarfile
from pathlib import Path

RAY_VERSION = "2.60.0"
STAGE = Path(".device/ray")
BUNDLE = "bundle.tar"
SUMS = "SHA256SUMS"
PARTS_AT, WHEELS_AT, SITE = "/tmp/parts", "/tmp/wheels", "/tmp/site"
ORT_VERSION = "1.31.1"
# What Ray needs that the GPU machine lacks (jsonschema's tree), or may have too old
# (packaging>=24.2, referencing needs attrs>=22.2): the versions this project's CI runs Ray with.
NEEDS = (
    "jsonschema==4.26.0",
    "jsonschema-specifications==2025.9.1",
    "referencing==0.37.0",
    "rpds-py==2026.9.1",
    "attrs==26.1.0",
    "packaging==26.4",
)
ORT_WHEELS = (f"onnxruntime-gpu=={ORT_VERSION}", "flatbuffers")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
PPOCR = ("ch_PP-OCRv4_det_infer.onnx", "ch_PP-OCRv4_rec_infer.onnx")
_RUN = f"PYTHONUNBUFFERED=1 python3 bench/gpu_ray.py --models {WHEELS_AT}/models"
BENCH = {  # bench/gpu_ray.py's rows: one GPU (--devices 0 vs --devices 0 --ray auto), or all of them
    "one GPU": f"{_RUN} --det-images 1024 --rec-images 4096 --repeat 2 --log $OUT/gpu_ray.1gpu.log",
    "two GPUs, call 1": f"{_RUN} --det-images 1024 --rec-images 4096 --repeat 2 --log $OUT/gpu_ray.2gpu.log",
    "two GPUs, call 2 (8192 images: 40 GB of .npy)": f"{_RUN} --det-images 8192 --rec-images 0 --log $OUT/gpu_ray.2gpu.8192.log",
}
PART_MB = 58  # + the working tree (~2.5 MiB) stays under the 64 MiB a call carries


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download(dest: Path, reqs: list[str], python: str = "3.12") -> None:
    """``pip download --no-deps`` of ``reqs`` for CPython ``python`` on manylinux x86_64."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
    cmd += ["--python-version", python, "--implementation", "cp", "-d", str(dest)]
    for p in PLATFORMS:
        cmd += ["--platform", p]
    subprocess.run(cmd + reqs, check=True)


def make_bundle(wheels: list[Path], out: Path, extra: dict[str, Path] | None = None) -> str:
    """One uncompressed tar of ``wheels`` (and ``extra``: name in the tar -> file) + SHA256SUMS,
    the same bytes for the same files; returns the tar's SHA-256."""
    files = sorted([(p.name, p) for p in wheels] + list((extra or {}).items()))
    if len({n for n, _ in files}) != len(files):
        raise SystemExit("two files of the same name")
    sums = "".join(f"{sha256(p)}  {n}\n" for n, p in files).encode()

    def info(name: str, size: int) -> tarfile.TarInfo:
        ti = tarfile.TarInfo(name)
        ti.size, ti.mtime, ti.mode, ti.uid, ti.gid, ti.uname, ti.gname = size, 0, 0o644, 0, 0, "", ""
        return ti

    with tarfile.open(out, "w", format=tarfile.USTAR_FORMAT) as tar:
        tar.addfile(info(SUMS, len(sums)), io.BytesIO(sums))
        for n, p in files:
            with open(p, "rb") as f:
                tar.addfile(info(n, p.stat().st_size), f)
    return sha256(out)


def split(path: Path, part_bytes: int, stage: Path) -> list[Path]:
    """``path`` cut into ``stage/pNN/<name>.partNN``: as few parts of at most ``part_bytes`` as
    will do, all of one size but the last."""
    parts = []
    total = path.stat().st_size
    count = max(1, -(-total // part_bytes))
    part_bytes = -(-total // count)
    with open(path, "rb") as f:
        k = 0
        while block := f.read(part_bytes):
            d = stage / f"p{k:02d}"
            d.mkdir(parents=True, exist_ok=True)
            for old in d.iterdir():
                old.unlink()
            out = d / f"{path.stem}.part{k:02d}"
            out.write_bytes(block)
            parts.append(out)
            k += 1
    for d in stage.glob("p[0-9][0-9]"):  # parts of an earlier, longer bundle
        if d.is_dir() and int(d.name[1:]) >= len(parts):
            for old in d.iterdir():
                old.unlink()
            d.rmdir()
    return parts


def copy_command(part: Path, root: Path, parts_at: str = PARTS_AT) -> tuple[str, list[str]]:
    """(command, carry) of the device call that copies ``part`` to ``parts_at``."""
    rel = part.parent.relative_to(root).as_posix()
    return f"mkdir -p {parts_at} && cp {rel}/* {parts_at}/ && ls -l {parts_at}", [rel]


def install_command(
    digest: str, parts_at: str = PARTS_AT, wheels_at: str = WHEELS_AT, site: str = SITE, python: str = "python3"
) -> str:
    """Shell: (once) join the parts, check the bundle and every wheel, install into ``site``;
    then PYTHONPATH=site:. and ``check``. Exits 3 naming what is wrong."""
    q = shlex.quote
    join = f"cat {q(parts_at)}/{Path(BUNDLE).stem}.part*"
    return (
        f'test -d {q(site)}/ray || {{ test "$({join} | sha256sum | cut -c1-64)" = {digest} '
        f'|| {{ echo "bundle incomplete: have $(ls {q(parts_at)})"; exit 3; }}; '
        f"mkdir -p {q(wheels_at)} && {join} | tar -x -C {q(wheels_at)} "
        f"&& (cd {q(wheels_at)} && sha256sum -c --quiet {SUMS}) "
        f"&& {python} -m pip install -q --no-index --no-deps --no-compile --target {q(site)} {q(wheels_at)}/*.whl "
        f"|| exit 3; }}; export PYTHONPATH={q(site)}:$PWD${{PYTHONPATH:+:$PYTHONPATH}}; {python} tools/device_ray.py check || exit 3"
    )


ORT_LIBS = (
    "export LD_LIBRARY_PATH=$(python3 -c 'import nvidia,os;print(os.path.dirname(nvidia.__path__[0]))' "
    "| xargs -I{} sh -c 'ls -d {}/nvidia/*/lib' | tr '\\n' ':')$LD_LIBRARY_PATH"
)


def print_calls(root: Path, stage: Path) -> None:
    digest = (stage / f"{BUNDLE}.sha256").read_text().split()[0]
    parts = sorted(stage.glob("p[0-9][0-9]/*.part[0-9][0-9]"))
    wheels = (stage / "wheels.txt").read_text().split()
    has_ort = any(w.startswith("onnxruntime_gpu-") for w in wheels)
    tree = sum(
        (root / f).stat().st_size
        for f in subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard"], cwd=root, capture_output=True, text=True
        ).stdout.split("\n")
        if f and (root / f).is_file()
    )
    print(f"Staged {len(parts)} part(s) of {BUNDLE} (sha256 {digest}) in {stage}: {', '.join(wheels)}")
    print(f"The working tree that travels with every call: {tree / 2**20:.1f} MiB (limit 64 MiB with the carry).")
    print("Device calls, back to back on one warm machine (a fresh machine: start again from the first):")
    for i, p in enumerate(parts, 1):
        cmd, carry = copy_command(p, root)
        size = (tree + p.stat().st_size) / 2**20
        flag = "  <-- OVER 64 MiB: stage with a smaller --part-mb" if size > 63 else ""
        print(f"  {i}. carry={json.dumps(carry)} ({size:.1f} MiB travels){flag}, command:\n     {cmd}")
    prefix = install_command(digest) + "; " + ORT_LIBS  # the CUDA libraries of the machine's PyTorch
    if not has_ort:
        print("(no onnxruntime-gpu in this bundle: it must be in /tmp/site already, from device-ortgpu)")
    print("Then begin every later command of the same machine with (it installs once, then only checks):")
    print(f"  {prefix};")
    print(f"  ({len(prefix) + 1} of the 2000 characters a command may have)")
    if all(f"models/{m}" in wheels for m in PPOCR):
        cmd, carry = copy_command(parts[-1], root)
        print(
            f"The bench (its models are in the bundle: {WHEELS_AT}/models) as the last call, instead of call {len(parts)}:"
        )
        for gpus, bench in BENCH.items():
            full = f"{cmd}; {prefix}; {bench}"
            print(f"  on {gpus} ({len(full)} characters), carry={json.dumps(carry)}, command:\n    {full}")
        print("  (a later bench call on the same machine: the same command; copying the part again is harmless)")


def check(dist: str = "ray", path: list[str] | None = None) -> list[str]:
    """Problems with ``dist``'s requirements (no extras) as installed on ``path``: missing, or a
    version outside the range; [] when every one is met."""
    from importlib import metadata

    from packaging.markers import default_environment
    from packaging.requirements import Requirement

    path = sys.path if path is None else path
    found, dists = {}, {}
    for d in metadata.distributions(path=path):  # first on the path wins, as import does
        name = (d.metadata["Name"] or "").lower().replace("_", "-")
        found.setdefault(name, d.version)
        dists.setdefault(name, d)
    key = dist.lower().replace("_", "-")
    if key not in dists:
        return [f"{dist} is not installed"]
    problems = []
    env = default_environment()
    want = dists[key].requires
    for text in want or []:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({**env, "extra": ""}):
            continue
        name = req.name.lower().replace("_", "-")
        have = found.get(name)
        if have is None:
            problems.append(f"{req.name} ({text}) is not installed")
        elif not req.specifier.contains(have, prereleases=True):
            problems.append(f"{req.name} {have} does not meet {text}")
    return problems


def stage_main(a) -> int:
    root = Path(
        subprocess.run(
            ["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True, check=True
        ).stdout.strip()
    )
    exclude = Path(
        subprocess.run(
            ["git", "rev-parse", "--git-path", "info/exclude"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
    )
    exclude = exclude if exclude.is_absolute() else root / exclude
    exclude.parent.mkdir(parents=True, exist_ok=True)
    if "/.device/" not in (exclude.read_text().split() if exclude.exists() else []):
        with open(exclude, "a") as f:
            f.write("/.device/\n")
    stage = root / STAGE
    wheels_dir = stage / "wheels"
    download(wheels_dir, [f"ray=={a.ray_version}", *NEEDS])
    picked = [next(wheels_dir.glob(f"ray-{a.ray_version}-*.whl"))]
    for req in NEEDS:
        name, ver = req.split("==")
        picked.append(next(wheels_dir.glob(f"{name.replace('-', '_')}-{ver}-*.whl")))
    if a.with_ort:
        ort = sorted((root / ".device/wheels").glob(f"onnxruntime_gpu-{ORT_VERSION}-*.whl"))
        fb = sorted((root / ".device/wheels").glob("flatbuffers-*.whl"))
        if not (ort and fb):
            download(wheels_dir, list(ORT_WHEELS))
            ort = sorted(wheels_dir.glob(f"onnxruntime_gpu-{ORT_VERSION}-*.whl"))
            fb = sorted(wheels_dir.glob("flatbuffers-*.whl"))
        picked += [ort[-1], fb[-1]]
    extra = {}
    if a.models:  # the two PP-OCRv4 models bench/gpu_ray.py calibrates travel in the bundle
        for name in PPOCR:
            src = next(Path(a.models).expanduser().rglob(name), None)
            if src is None:
                raise SystemExit(
                    f"{name} not under {a.models}: python tools/corpus.py fetch --only ppocrv4_det,ppocrv4_rec"
                )
            extra[f"models/{name}"] = src
    bundle = stage / BUNDLE
    digest = make_bundle(picked, bundle, extra)
    split(bundle, int(a.part_mb * 2**20), stage)
    bundle.unlink()  # the parts are the bundle; 'cat' them to get it back
    (stage / f"{BUNDLE}.sha256").write_text(f"{digest}  {BUNDLE}\n")
    (stage / "wheels.txt").write_text("\n".join(sorted([p.name for p in picked] + list(extra))) + "\n")
    print_calls(root, stage)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    st = sub.add_parser("stage", help="download, bundle and split; print the device calls")
    st.add_argument("--with-ort", action="store_true", help=f"bundle onnxruntime-gpu {ORT_VERSION} + flatbuffers too")
    st.add_argument("--ray-version", default=RAY_VERSION)
    st.add_argument(
        "--models",
        default="~/.cache/calibkit-corpus/models",
        help="where the PP-OCRv4 det/rec models are (bundled for bench/gpu_ray.py; '' leaves them out)",
    )
    st.add_argument("--part-mb", type=float, default=PART_MB, help="MiB per part (default %(default)s)")
    sub.add_parser("calls", help="print the device calls of the staged bundle again")
    ck = sub.add_parser("check", help="on the GPU machine: Ray's requirements met? import ray")
    ck.add_argument("--dist", default="ray")
    a = ap.parse_args(argv)
    if a.command == "stage":
        return stage_main(a)
    if a.command == "calls":
        root = Path(
            subprocess.run(
                ["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True, check=True
            ).stdout.strip()
        )
        print_calls(root, root / STAGE)
        return 0
    problems = check(a.dist)
    for p in problems:
        print(f"device_ray check: {p}")
    if problems:
        return 1
    mod = __import__(a.dist)
    print(
        f"device_ray check: {a.dist} {getattr(mod, '__version__', '?')} from {os.path.dirname(mod.__file__)}: requirements met"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
