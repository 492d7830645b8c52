"""Regenerate tests/unit/trt/trt_signatures.json: the pybind11 signatures of TensorRT's Python
bindings, read from the real bindings wheels.

    python tools/trt_signatures.py [--out tests/unit/trt/trt_signatures.json] [--wheels DIR]

For each wheel (tensorrt-cu12-bindings 10.16.1.11, tensorrt-cu13-bindings 11.4.0.106) it
unpacks ``tensorrt_bindings/``, builds EMPTY stand-in shared libraries (gcc) for the
libnvinfer / libnvinfer_plugin / libnvonnxparser symbols ``tensorrt.so`` needs to load, imports
the module in a subprocess with those on LD_LIBRARY_PATH and writes down every class (bases,
methods with their overloads' parameter names/defaults/return type, properties, enum members)
and module function from the ``__doc__`` pybind11 generates. This imports the bindings only:
nothing in TensorRT runs (the stand-ins return nothing and are never called).

The calibrator methods TensorRT calls from C++ without binding them for Python
(IInt8LegacyCalibrator's get_quantile, get_regression_cutoff, read_histogram_cache,
write_histogram_cache) are not in any docstring: their arguments come from NVIDIA's
``python/src/infer/pyInt8.cpp`` (PYBIND11_OVERLOAD_PURE_NAME ... , length) / (..., ptr, length)),
and their presence is checked against the binary's "Tried to call pure virtual function" strings.

Needs gcc, nm, network access to PyPI for the wheels (or --wheels DIR holding them).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WHEELS = {"10": ("tensorrt-cu12-bindings", "10.16.1.11"), "11": ("tensorrt-cu13-bindings", "11.4.0.106")}
DEFAULT_OUT = ROOT / "tests" / "unit" / "trt" / "trt_signatures.json"
# Called by TensorRT through the trampoline only (pyInt8.cpp); parameter names as pyInt8.cpp passes them.
TRAMPOLINE_ONLY = {
    "IInt8LegacyCalibrator": {
        "get_quantile": [],
        "get_regression_cutoff": [],
        "read_histogram_cache": ["length"],
        "write_histogram_cache": ["ptr", "length"],
    }
}


def wheel(name: str, version: str, where: Path) -> Path:
    pattern = f"{name.replace('-', '_')}-{version}-*.whl"
    found = sorted(where.glob(pattern))
    if not found:
        where.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "--python-version",
                "3.11",
                "--platform",
                "manylinux_2_28_x86_64",
                "-q",
                "-d",
                str(where),
                f"{name}=={version}",
            ],
            check=True,
        )
        found = sorted(where.glob(pattern))
    return found[0]


def stand_ins(so: Path, libdir: Path, major: str) -> list[str]:
    """Empty shared libraries defining every unversioned non-Python symbol ``so`` needs."""
    out = subprocess.run(["nm", "-D", "--undefined-only", str(so)], capture_output=True, text=True, check=True).stdout
    names = sorted({ln.split()[-1] for ln in out.splitlines() if ln.split() and ln.split()[0] == "U"} - {""})
    names = [n for n in names if "@" not in n and not n.startswith(("Py", "_Py", "dl"))]
    src = libdir / "stub.c"
    src.write_text("/* empty stand-ins, never called */\n" + "".join(f"void {n}(void) {{}}\n" for n in names))
    for lib in ("nvinfer", "nvinfer_plugin", "nvonnxparser"):
        subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(libdir / f"lib{lib}.so.{major}"), str(src)], check=True)
    return names


DUMP = r"""
import inspect, json, re, sys
sys.path.insert(0, sys.argv[1])
import tensorrt_bindings as trt
PREFIX = re.compile(r"\btensorrt_bindings\.tensorrt\.")

def split(text):
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch in "[(<{": depth += 1
        if ch in "])>}": depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur.strip()); cur = ""
        else:
            cur += ch
    if cur.strip(): parts.append(cur.strip())
    return parts

def sigs(name, doc):
    out = []
    for m in re.finditer(r"^(?:\d+\. )?" + re.escape(name) + r"\((.*)\) -> (.*)$", PREFIX.sub("", doc or ""), re.M):
        params = []
        for p in split(m.group(1)):
            pname, _, rest = p.partition(":")
            ptype, eq, default = rest.partition("=")
            if pname.strip() in ("self", "*args", "**kwargs"):
                if pname.strip() != "self": params.append({"name": pname.strip(), "variadic": True})
                continue
            params.append({"name": pname.strip(), "type": ptype.strip(), **({"default": True} if eq else {})})
        out.append({"params": params, "returns": m.group(2).strip()})
    return out

table = {"version": trt.__version__, "classes": {}, "functions": {}}
for name in sorted(dir(trt)):
    if name.startswith("_"): continue
    obj = getattr(trt, name)
    if inspect.isclass(obj) and obj.__module__.startswith("tensorrt"):
        entry = {"bases": [b.__name__ for b in obj.__mro__[1:] if b.__module__.startswith("tensorrt")], "methods": {}, "properties": {},
                 "names": sorted(n for n in dir(obj) if not n.startswith("_"))}
        if hasattr(obj, "__members__"):
            entry["members"] = sorted(obj.__members__)
        for attr, v in sorted(vars(obj).items()):
            if attr.startswith("__") and attr != "__init__": continue
            if attr.startswith("_pybind11"): continue
            if isinstance(v, property):
                ret = re.search(r"-> (.*)$", PREFIX.sub("", (v.fget.__doc__ or "").splitlines()[0] if v.fget and v.fget.__doc__ else ""))
                entry["properties"][attr] = {"writable": v.fset is not None, "type": ret.group(1).strip() if ret else ""}
            elif isinstance(v, staticmethod) or callable(v):
                doc = getattr(v, "__doc__", None) or getattr(getattr(v, "__func__", None), "__doc__", None)
                s = sigs(attr, doc)
                if s: entry["methods"][attr] = s
        table["classes"][name] = entry
    elif callable(obj) and not inspect.isclass(obj):
        s = sigs(name, obj.__doc__)
        if s: table["functions"][name] = s
print(json.dumps(table, sort_keys=True))
"""


def dump(major: str, whl: Path, work: Path) -> dict:
    site = work / f"site{major}"
    with zipfile.ZipFile(whl) as z:
        z.extractall(site)
    so = site / "tensorrt_bindings" / "tensorrt.so"
    libdir = work / f"lib{major}"
    libdir.mkdir()
    names = stand_ins(so, libdir, major)
    env = {**os.environ, "LD_LIBRARY_PATH": str(libdir)}
    proc = subprocess.run([sys.executable, "-c", DUMP, str(site)], capture_output=True, text=True, env=env, check=True)
    table = json.loads(proc.stdout)
    text = so.read_bytes().decode("latin-1")
    pure = set(re.findall(r'pure virtual function "(\w+)::(\w+)"', text))
    table["trampoline_only"] = {}
    for cls, meths in TRAMPOLINE_ONLY.items():
        if cls not in table["classes"]:
            continue
        for meth, params in meths.items():
            if (cls, meth) not in pure:
                raise SystemExit(f"{whl.name}: no pure virtual {cls}::{meth} in tensorrt.so; update TRAMPOLINE_ONLY")
            table["trampoline_only"].setdefault(cls, {})[meth] = [
                {"params": [{"name": p} for p in params], "returns": ""}
            ]
    table["stand_in_symbols"] = names
    table["wheel"] = whl.name
    return table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--wheels", type=Path, default=Path.home() / ".cache" / "calibkit" / "trt-wheels")
    a = ap.parse_args(argv)
    doc = {
        "source": (
            "pybind11 __doc__ signatures of tensorrt_bindings imported from the wheels named under each version, "
            "with empty stand-in libraries for libnvinfer/libnvinfer_plugin/libnvonnxparser (no TensorRT ran); "
            "trampoline_only: calibrator methods TensorRT calls from C++ (arguments from NVIDIA/TensorRT "
            "python/src/infer/pyInt8.cpp, presence checked in tensorrt.so). Regenerate: python tools/trt_signatures.py"
        ),
        "versions": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for major, (name, version) in WHEELS.items():
            doc["versions"][major] = dump(major, wheel(name, version, a.wheels), Path(tmp))
    a.out.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    for major, t in doc["versions"].items():
        n = sum(len(c["methods"]) for c in t["classes"].values())
        print(
            f"TensorRT {t['version']}: {len(t['classes'])} classes, {n} methods, stand-ins for {len(t['stand_in_symbols'])} symbols"
        )
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
