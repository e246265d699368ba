"""``mas agent ID [CONFIG] [--server HOST:PORT]``: the instances of one agent, in this process.

The process is ``mas.runtime.AgentProcess``: it holds only that agent's key and
connects to the server ``--server`` or ``server_listen_addr`` names.
"""

from __future__ import annotations

import argparse

import trio

from ..config import load_config
from ..runtime import AgentProcess
from .exits import EXIT_OK, interrupted


def run(args: argparse.Namespace) -> int:
    """Run the agent's instances until stopped; the exit status."""
    process = AgentProcess(load_config(args.config), args.agent_id, server=args.server)
    trio.run(process.run)
    if process.stopped_at_once:
        return interrupted()
    return EXIT_OK
