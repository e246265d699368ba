"""How a ``mas`` command ends: its exit status and what it says on stderr, in one place.

::

    how the command ended                          status  stderr
    returned normally                               0      (its own output)
    a reader closed stdout early (``| head``)       0      nothing
    ConfigError (AgentLoadError), CertificateError  2      ``mas: error: ...`` per error
    any other MasError (AgentCrashLoopError,        1      ``mas: error: ...`` per error
      ControlError "no server is running ...")
    a verdict of its own (``verdict``): a tampered   1, 2   its message as it is
      audit trail, ids not in the dead-letter queue
    Ctrl-C, a second stop signal                   130     ``mas: interrupted``
    argparse's usage errors                          2     argparse's usage message
    anything else                                   --     a traceback: it is a bug

Errors inside exception groups (a nursery's) count one by one (``leaves``);
several instances failing the same way say it once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from typing import Final

from ..errors import CertificateError, ConfigError, MasError, leaves

EXIT_OK: Final = 0  # done, or stopped gracefully
EXIT_FAILED: Final = 1  # the runtime failed, an agent crash-looped, a verdict failed
EXIT_USAGE: Final = 2  # invalid configuration, certificate, address, agent class or file
EXIT_INTERRUPTED: Final = 130  # Ctrl-C outside a graceful stop (128 + SIGINT)

_USAGE_ERRORS: Final = (ConfigError, CertificateError)  # the errors that exit with EXIT_USAGE


def exit_status(exc: BaseException) -> int:
    """The exit status for an exception that ended a command, after saying what it was.

    Re-raises ``SystemExit`` and anything that is not a ``MasError`` (a bug).
    """
    errors = leaves(exc)
    if any(isinstance(error, KeyboardInterrupt) for error in errors):
        return interrupted()
    if any(isinstance(error, SystemExit) for error in errors):
        raise exc
    if all(isinstance(error, BrokenPipeError) for error in errors):
        _quiet_stdout()
        return EXIT_OK
    if not all(isinstance(error, MasError) for error in errors):
        raise exc
    seen: set[str] = set()
    for error in errors:
        text = str(error)
        if text not in seen:  # several instances failing the same way say it once
            seen.add(text)
            print(f"mas: error: {text}", file=sys.stderr)
    usage = any(isinstance(error, _USAGE_ERRORS) for error in errors)
    return EXIT_USAGE if usage else EXIT_FAILED


def verdict(status: int, message: str, *, result: bool = False) -> int:
    """A command's own verdict: ``message`` as it is, and ``status``.

    The message goes to stderr, except the successful result of a command whose
    message is its result (``result``: ``audit verify``), which goes to stdout.
    """
    if message:
        print(message, file=sys.stdout if (status == EXIT_OK and result) else sys.stderr)
    return status


def interrupted() -> int:
    """Ctrl-C (or a second stop signal) ended the command: one line, status 130."""
    print("mas: interrupted", file=sys.stderr)
    return EXIT_INTERRUPTED


def ignore_late_signals() -> None:
    """Ignore SIGINT and SIGTERM from now on: the command has finished.

    Python resets SIGINT to its default action while the interpreter shuts down (a
    few hundred milliseconds for a server with many modules loaded), and any thread
    may take the signal: a second Ctrl-C then would kill the process by the signal,
    with no word and no exit status of ours. The command has already stopped
    (gracefully, or not), so a signal has nothing left to stop; ignoring it (a
    disposition Python keeps through its shutdown) leaves the exit status ours.
    Called by ``mas.cli.console`` (the process entry point), never by ``main``,
    which may run in-process.
    """
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)


def _quiet_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush finds no closed pipe."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
