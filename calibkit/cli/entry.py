"""The ``calibkit`` entry point: signals first, then the (heavier) command modules.

SIGTERM (and SIGHUP: a closed terminal) unwinds like Ctrl-C, and an interrupt that lands while
modules are still being imported ends quietly: nothing has been written by then.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys

from calibkit.cli.signals import (  # noqa: F401  (_on_*: the handlers tests install)
    _on_sighup,
    _on_sigint,
    _on_sigterm,
    interrupt_behind,
)


def main() -> None:
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_sigint)
    signal.signal(signal.SIGTERM, _on_sigterm)
    if signal.getsignal(signal.SIGHUP) is signal.SIG_DFL:  # nohup'ed runs keep ignoring it
        signal.signal(signal.SIGHUP, _on_sighup)
    try:
        _check_onnxruntime()
        from calibkit.cli.commands import cli
    except BaseException as exc:
        signum = interrupt_behind(exc) if isinstance(exc, Exception | KeyboardInterrupt) else None
        if signum is None:
            raise
        sys.stderr.write(
            "calibkit: interrupted while starting; nothing from this run was published; previous outputs are unchanged\n"
        )
        raise SystemExit(128 + signum) from None
    _run(cli)


def _run(cli) -> None:
    """click's main without its own interrupt handling: an interrupt anywhere in a command,
    even after its last line was printed, gets calibkit's message (what was published) and
    exit 128 + the signal number, not click's bare "Aborted!" and exit 1."""

    try:
        try:
            _run_command(cli)
        except KeyboardInterrupt as exc:  # landed after the command's own handling, before _settled
            _settled()
            from calibkit.cli.signals import interrupted

            interrupted(getattr(exc, "signum", 2))
        finally:
            _settled()
    except SystemExit as exc:
        _leave_stray_threads(exc.code)
        raise


def _leave_stray_threads(code) -> None:
    """Threads the user's code (a metric, a loader) started and left running would hold the
    process after the command ended, deaf to SIGTERM while Python waits for them: say so and
    end now, after the exit handlers (what Python's own exit would run before waiting)."""
    mod = sys.modules.get("calibkit.data.usercode")
    if mod is not None:
        procs = mod.running(mod.USER_PROCESSES & mod.children())
        if procs:
            with contextlib.suppress(Exception):
                shown = ", ".join(map(str, procs[:5])) + (", ..." if len(procs) > 5 else "")
                sys.stderr.write(
                    f"calibkit: warning: {len(procs)} process(es) started by user code still run (pid {shown}); "
                    "calibkit does not wait for them or stop them\n"
                )
    stray = [t for t in getattr(mod, "USER_THREADS", []) if t.is_alive()]
    if not stray:
        return
    import atexit

    names = ", ".join(repr(t.name) for t in stray[:3]) + (", ..." if len(stray) > 3 else "")
    status = code if isinstance(code, int) else (0 if code is None else 1)
    with contextlib.suppress(Exception):
        sys.stderr.write(
            f"calibkit: warning: {len(stray)} thread(s) started by user code still run ({names}); "
            "calibkit exits without waiting for them\n"
        )
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(status)


def _settled() -> None:
    """The command is over (its outputs published or not, its message printed): an interrupt
    from here to the process's exit changes nothing, so it is recorded and ignored instead of
    tracing through Python's shutdown and replacing the run's exit status."""
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(s) in (_on_sigint, _on_sigterm, _on_sighup):
            # SIG_IGN, not a Python handler: Python's finalisation puts SIG_DFL back under every
            # Python-level handler, and a signal landing then killed the finished run (exit 130
            # after a complete set, without a word); an ignored signal stays ignored to the end.
            signal.signal(s, signal.SIG_IGN)


def _run_command(cli) -> None:
    import click

    try:
        code = cli.main(prog_name="calibkit", standalone_mode=False)
    except click.exceptions.Abort as exc:
        signum = interrupt_behind(exc)
        if signum is None:  # click's own Abort: a prompt answered with EOF
            sys.stderr.write("Aborted!\n")
            raise SystemExit(1) from None
        from calibkit.cli.signals import interrupted

        interrupted(signum)
    except click.ClickException as exc:
        exc.show()
        raise SystemExit(exc.exit_code) from None
    except KeyboardInterrupt as exc:
        from calibkit.cli.signals import interrupted

        interrupted(getattr(exc, "signum", 2))
    _name_removed()
    raise SystemExit(code if isinstance(code, int) else 0)


def _name_removed() -> None:
    """The files of a previous set that the new one replaced without a file of the same name
    (another model's cache in the same -o): said, since the user may not expect it."""
    from calibkit.outputs.publish import EDITED, REMOVED

    if REMOVED:
        shown = ", ".join(str(p) for p in REMOVED[:4]) + (f", ... {len(REMOVED) - 4} more" if len(REMOVED) > 4 else "")
        sys.stderr.write(f"calibkit: note: removed {len(REMOVED)} file(s) of the set this run replaced: {shown}\n")
    if EDITED:
        shown = ", ".join(str(p) for p in EDITED[:4]) + (f", ... {len(EDITED) - 4} more" if len(EDITED) > 4 else "")
        sys.stderr.write(
            f"calibkit: note: replaced {len(EDITED)} file(s) that had been edited after their set was published "
            f"(the edits are gone): {shown}\n"
        )


def _check_onnxruntime() -> None:
    """Exactly one ONNX Runtime flavour (calibkit/ort_package.py): none is an error, both a warning."""
    from calibkit import ort_package

    problem, warning = ort_package.missing(), ort_package.conflict()
    if problem:
        sys.stderr.write(f"calibkit: error: {problem}\n")
        raise SystemExit(1)
    if warning:
        sys.stderr.write(f"calibkit: warning: {warning}\n")
