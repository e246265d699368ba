"""``python -m mas``: the command line, one module per command.

The commands and their arguments are listed in ``mas.cli.parser``.

Exit status: 0 on success (including a graceful stop on SIGINT/SIGTERM, and a
reader that closed our stdout early, as ``| head`` does), 1 when an agent
crash-looped or the runtime failed, or when no server is running for the config
(``status``, ``top``, ``reload``: "no server is running for ...: start it with ..."),
2 for an invalid configuration,
certificate, listen address or agent class: a one-paragraph message on stderr
naming the file, key or address, never a traceback; 130 for Ctrl-C outside a
graceful stop, or a second stop signal that cut one short (one line,
``mas: interrupted``). A signal that comes once everything has stopped changes
nothing (``ignore_late_signals``).
``--log-level`` goes before or after the command; ``--version`` prints the version.

Layout: ``parser`` (every command, its arguments, and the module that runs it),
``exits`` (the one map from how a command ended to its exit status and message),
then one module per command, named as the command (``run`` runs ``serve`` too;
``audit`` is a package over ``audit.files`` and ``audit.store``); ``logs`` sets up
logging. The processes the commands start are ``mas.runtime``'s.
"""

from __future__ import annotations

from collections.abc import Sequence

from .exits import exit_status, ignore_late_signals, interrupted
from .logs import configure_logging
from .parser import parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status.

    Error handling
        A ``MasError`` (alone or inside exception groups) is printed as one
        paragraph per error, with status 2 for configuration and certificate
        problems and 1 otherwise; Ctrl-C anywhere is one line and status 130;
        a reader that closes our stdout early (``| head``) ends the command
        quietly with status 0. Anything else is a bug and keeps its traceback.
        The table is ``mas.cli.exits``.
    """
    args = parser().parse_args(argv)
    configure_logging(str(args.log_level))
    try:
        status: int = args.handler(args)
    except BaseException as exc:  # noqa: BLE001 - sorted by exit_status; the unexpected re-raised
        return exit_status(exc)
    return status


def console() -> int:
    """The ``mas`` command and ``python -m mas``: ``main``, then ``ignore_late_signals``."""
    try:
        status = main()
    except KeyboardInterrupt:  # came between main's own handling and the line below
        status = interrupted()
    ignore_late_signals()  # a Ctrl-C during the interpreter's shutdown must not kill it
    return status
