"""The ``calibkit`` entry point: signals first, then the (heavier) command modules.

SIGTERM (and SIGHUP: a closed terminal) unwinds like Ctrl-C, and an interrupt that lands while
modules are still being imported ends quietly: nothing has been written by then.
"""

from __future__ import annotations

import signal
import sys


class Terminated(KeyboardInterrupt):
    signum = 15


class HungUp(KeyboardInterrupt):
    signum = 1


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


def _on_sighup(signum, frame) -> None:
    raise HungUp()


def main() -> None:
    signal.signal(signal.SIGTERM, _on_sigterm)
    if signal.getsignal(signal.SIGHUP) is signal.SIG_DFL:  # nohup'ed runs keep ignoring it
        signal.signal(signal.SIGHUP, _on_sighup)
    _check_onnxruntime()
    try:
        from calibkit.cli.commands import cli
    except KeyboardInterrupt as exc:
        sys.stderr.write(
            "calibkit: interrupted while starting; nothing from this run was published; previous outputs are unchanged\n"
        )
        raise SystemExit(128 + getattr(exc, "signum", 2)) from None
    cli(prog_name="calibkit")


def _check_onnxruntime() -> None:
    """Exactly one ONNX Runtime flavour (calibkit/ort_package.py): none is an error, both a warning."""
    from calibkit import ort_package

    problem, warning = ort_package.missing(), ort_package.conflict()
    if problem:
        sys.stderr.write(f"calibkit: error: {problem}\n")
        raise SystemExit(1)
    if warning:
        sys.stderr.write(f"calibkit: warning: {warning}\n")
