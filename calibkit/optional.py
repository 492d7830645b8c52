"""Optional dependencies, in one place: whether one is installed (without importing it), and
importing it with an error that says what to install."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from calibkit.errors import CalibkitError


def available(module: str) -> bool:
    """``module`` is importable (its top package found without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a broken __spec__
        return False


def require(module: str, message: str) -> ModuleType:
    """Import ``module``, or raise ``message`` (what needs it and how to install it) as a
    one-line CalibkitError."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise CalibkitError(message) from None
