"""TensorRT calibration cache (8.x/10.x implicit quantization) writer and reader.

    TRT-101601-EntropyCalibration2
    input: 3c010a14

One line per tensor: the name, ``": "``, and the big-endian IEEE-754 float32 bits of
``scale = amax / 127`` as 8 lowercase hex digits. Names may contain ``:`` (split on the
last ``": "``).
"""

from __future__ import annotations

import math
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from calibkit.errors import CalibkitError
from calibkit.outputs.atomic import write_text

ALGORITHMS = ("EntropyCalibration2", "EntropyCalibration", "MinMaxCalibration", "LegacyCalibration")
DEFAULT_TRT_VERSION = "10.16.1"
_HEADER = re.compile(r"^TRT-([0-9]{1,9})-(\w+)$", re.ASCII)  # TensorRT versions are small ints (101601)
_HEX = re.compile(r"^[0-9a-f]{8}$")


_VERSION = re.compile(r"^(\d{1,2})(?:\.(\d{1,2})(?:\.(\d{1,2})(?:\.\d+)?)?)?$")  # a build number only after 3 parts
# Characters str.splitlines() breaks on, and NUL: a name holding one would split its cache line.
_LINE_BREAKS = frozenset("\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029\x00")


def encode_version(version: str) -> int:
    """``"10.16.1"`` -> 101601; ``"8.6.1"`` -> 8601 (TensorRT's own integer versions)."""
    m = _VERSION.match(str(version).strip())
    if not m or not 5 <= int(m.group(1)) <= 99:
        raise CalibkitError(
            f"--trt-version {version!r} is not a TensorRT version like 10.16.1 (major 5-99, minor and patch 0-99)"
        )
    major, minor, patch = (int(g) if g else 0 for g in m.groups())
    return major * 10000 + minor * 100 + patch if major >= 10 else major * 1000 + minor * 100 + patch


def check_name(name: str, where: str = "cache") -> None:
    """A tensor name the cache format can carry (one line, ``name: hex``)."""
    if not isinstance(name, str) or not name:
        raise CalibkitError(f"{where}: empty tensor name; every tensor needs a name for the TensorRT cache")
    bad = sorted(_LINE_BREAKS.intersection(name))
    if bad:
        raise CalibkitError(
            f"{where}: tensor name {name!r} holds a line break ({bad[0]!r}), which the TensorRT cache format cannot carry; "
            "rename the tensor in the model (e.g. with onnx-graphsurgeon) and recalibrate"
        )


def installed_trt_version() -> str | None:
    """The version of an importable ``tensorrt``, without importing it unless present."""
    from calibkit import optional

    if not optional.available("tensorrt"):
        return None
    try:
        import tensorrt

        return str(tensorrt.__version__)
    except Exception:  # a stub or broken install: fall back to the flag
        return None


def scale_hex(scale: float) -> str:
    return struct.pack(">f", scale).hex()


@dataclass
class Cache:
    version: int
    algorithm: str
    scales: dict[str, float]

    def header(self) -> str:
        return f"TRT-{self.version}-{self.algorithm}"

    def text(self) -> str:
        lines = [self.header()]
        if not _HEADER.match(self.header()) or self.algorithm not in ALGORITHMS:
            raise CalibkitError(
                f"cache header {self.header()!r} would not read back; algorithm must be one of {', '.join(ALGORITHMS)}"
            )
        for name, scale in self.scales.items():
            check_name(name, "TensorRT cache")
            if not (isinstance(scale, float) and math.isfinite(scale) and scale > 0):
                raise CalibkitError(
                    f"refusing to write scale {scale} for tensor {name!r}: scales must be finite and > 0"
                )
            lines.append(f"{name}: {scale_hex(scale)}")
        return "\n".join(lines) + "\n"

    def write(self, path: str | Path, tx=None) -> Path:
        return write_text(path, self.text(), tx)


def parse(text: str, where: str = "cache") -> Cache:
    lines = text.splitlines()
    if not lines:
        raise CalibkitError(f"{where} is empty; expected a TRT-<version>-<algorithm> header")
    m = _HEADER.match(lines[0].strip())
    if not m:
        raise CalibkitError(f"{where}:1: bad header {lines[0][:60]!r}; expected TRT-<version>-<algorithm>")
    scales: dict[str, float] = {}
    for no, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        name, sep, value = line.rpartition(": ")
        value = value.strip()
        if not sep or not name or not _HEX.match(value):
            raise CalibkitError(f"{where}:{no}: malformed line {line[:80]!r}; expected '<tensor>: <8 hex digits>'")
        check_name(name, f"{where}:{no}")
        scale = struct.unpack(">f", bytes.fromhex(value))[0]
        if not (math.isfinite(scale) and scale > 0):
            raise CalibkitError(f"{where}:{no}: tensor {name!r} has scale {scale}; scales must be finite and > 0")
        if name in scales:
            raise CalibkitError(f"{where}:{no}: tensor {name!r} appears twice")
        scales[name] = scale
    return Cache(int(m.group(1)), m.group(2), scales)


def read(path: str | Path) -> Cache:
    from calibkit.outputs.publish import verify
    from calibkit.outputs.sets import settle

    p = Path(path)
    settle(p)  # finish a publish cut off after its commit point before reading (then verify after)
    if not p.is_file() and not p.is_dir():  # a FIFO would block the read for good
        from calibkit.graph.model import not_a_file

        raise CalibkitError(f"cache {p} {not_a_file(p)}; pass the .cache file")
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CalibkitError(f"cache {p} not found") from None
    except IsADirectoryError:
        raise CalibkitError(f"cache {p} is a directory; pass the .cache file") from None
    except UnicodeDecodeError:
        raise CalibkitError(f"cache {p} is not a text calibration cache") from None
    except OSError as exc:
        raise CalibkitError(f"cannot read cache {p}: {exc.strerror}") from None
    cache = parse(text, where=str(p))
    verify(p)
    return cache
