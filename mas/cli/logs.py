"""Log output for people: how ``python -m mas`` configures ``logging``.

At the default level (INFO) a run prints what an operator acts on: where the
server listens, warnings, errors and a one-line summary at shutdown; the
lifecycle of stores, sessions and agents is logged at DEBUG (``--log-level
debug`` shows everything, with timestamps and logger names).
"""

from __future__ import annotations

import logging
import sys

_DEBUG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
_CONCISE_FORMAT = "mas: %(levelname_prefix)s%(message)s"


class _ConciseFormatter(logging.Formatter):
    """``mas: message`` for INFO, ``mas: warning: message`` for the levels above."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = "" if record.levelno <= logging.INFO else f"{record.levelname.lower()}: "
        record.levelname_prefix = prefix
        return super().format(record)


def configure_logging(level_name: str) -> None:
    """Log to stderr at ``level_name`` (DEBUG, INFO, WARNING, ERROR; unknown means INFO)."""
    level = getattr(logging, level_name.upper(), None)
    if not isinstance(level, int):
        level = logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    if level <= logging.DEBUG:
        handler.setFormatter(logging.Formatter(_DEBUG_FORMAT))
    else:
        handler.setFormatter(_ConciseFormatter(_CONCISE_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
