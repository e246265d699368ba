"""``mas run [CONFIG]`` and ``mas serve [CONFIG]``: the runtime of mas.yaml in this process.

``run`` starts the server and the agents mas.yaml lists, ``serve`` the server
alone (allowlisted agents connect from elsewhere); both until a stop signal
(``mas.runtime.Runtime``).
"""

from __future__ import annotations

import argparse

import trio

from ..config import load_config
from ..runtime import Runtime
from .exits import EXIT_OK, interrupted


def run(args: argparse.Namespace) -> int:
    """Run until stopped; the exit status (130 when a second signal cut the stop short)."""
    runtime = Runtime(load_config(args.config), serve_only=args.command == "serve")
    trio.run(runtime.run)
    if runtime.stopped_at_once:
        return interrupted()
    return EXIT_OK
