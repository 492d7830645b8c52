"""TensorRT integration: calibrators (10.x), engine builds (10.x and 11.x), engine runner.

Importing this package imports no TensorRT and no CUDA library; each is imported on first
use, and a missing one raises a one-line :class:`~calibkit.errors.CalibkitError` saying
what to install.
"""

from __future__ import annotations

import functools
import importlib.util

from calibkit.errors import CalibkitError

INSTALL = (
    "install TensorRT and cuda-python: pip install 'calibkit[tensorrt10]' (TensorRT 10.x: calibrators, --ranges) "
    "or 'calibkit[tensorrt11]' (11.x: Q/DQ only); it needs an NVIDIA GPU with its driver"
)
EXTRA = {10: "calibkit[tensorrt10]", 11: "calibkit[tensorrt11]"}
SUPPORTED_MAJORS = (10, 11)


@functools.lru_cache(maxsize=1)
def _probe() -> tuple[int | None, str]:
    """(major version, reason) of the importable TensorRT; (None, why) when there is none."""
    if importlib.util.find_spec("tensorrt") is None:
        return None, "TensorRT is not installed"
    try:
        import tensorrt
    except Exception as exc:  # libnvinfer missing, stub wheel, no driver
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        return None, f"tensorrt does not import ({first})"
    version = str(getattr(tensorrt, "__version__", "0"))
    try:
        return int(version.split(".")[0]), version
    except ValueError:
        return None, f"tensorrt reports an unreadable version {version!r}"


def installed_major() -> int | None:
    return _probe()[0]


def installed_version() -> str | None:
    major, text = _probe()
    return text if major is not None else None


def unavailable_reason() -> str | None:
    """None when TensorRT 10/11 is importable, else one line: why, and what to install."""
    major, text = _probe()
    if major is None:
        return f"{text}: {INSTALL}"
    if major not in SUPPORTED_MAJORS:
        return f"TensorRT {text} is not supported; calibkit builds with TensorRT 10.x or 11.x"
    return None


def require(major: int | None = None, what: str = "this") -> int:
    """The installed major version; CalibkitError when TensorRT is absent or ``major`` differs."""
    why = unavailable_reason()
    if why:
        raise CalibkitError(why)
    have = installed_major()
    if major is not None and have != major:
        raise CalibkitError(
            f"{what} needs TensorRT {major}.x but {installed_version()} is installed; pip install '{EXTRA[major]}' in another environment"
        )
    return have  # type: ignore[return-value]
