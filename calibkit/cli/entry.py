"""The ``calibkit`` entry point: signals first, then the (heavier) command modules.

SIGTERM unwinds like Ctrl-C, and an interrupt that lands while modules are still being
imported ends quietly: nothing has been written by then.
"""

from __future__ import annotations

import signal
import sys


class Terminated(KeyboardInterrupt):
    signum = 15


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


def main() -> None:
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        from calibkit.cli.commands import cli
    except KeyboardInterrupt as exc:
        sys.stderr.write(
            "calibkit: interrupted while starting; nothing from this run was published; previous outputs are unchanged\n"
        )
        raise SystemExit(128 + getattr(exc, "signum", 2)) from None
    cli(prog_name="calibkit")
