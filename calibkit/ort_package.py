"""Which ONNX Runtime package is installed: exactly one of ``onnxruntime`` (CPU) and
``onnxruntime-gpu`` (CUDA), chosen with the ``cpu`` / ``gpu`` extras (``pip install
'calibkit[cpu]'`` or ``'calibkit[gpu]'``). Both distributions install the same ``onnxruntime``
import package: with both, the one installed last is the one that runs, and uninstalling either
deletes files the other needs. Checked by the CLI before any command runs (no onnxruntime import)."""

from __future__ import annotations

import importlib.util
from importlib import metadata

PACKAGES = ("onnxruntime", "onnxruntime-gpu")
CHOOSE = "pip install 'calibkit[cpu]' (CPU) or 'calibkit[gpu]' (NVIDIA GPU with CUDA 12)"


def installed() -> list[str]:
    """The ONNX Runtime distributions installed in this environment, of ``PACKAGES``."""
    out = []
    for name in PACKAGES:
        try:
            metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        out.append(name)
    return out


def missing() -> str | None:
    """Why calibkit cannot run (no importable onnxruntime), or None."""
    if importlib.util.find_spec("onnxruntime") is None:
        return f"ONNX Runtime is not installed; install exactly one flavour: {CHOOSE}"
    return None


def conflict() -> str | None:
    """A warning when both flavours are installed, or None."""
    if len(installed()) < 2:
        return None
    return (
        "both onnxruntime and onnxruntime-gpu are installed; they share the onnxruntime package, so the one "
        "installed last is what runs and uninstalling either breaks the other. Keep one: "
        f"pip uninstall -y onnxruntime onnxruntime-gpu, then {CHOOSE}"
    )
