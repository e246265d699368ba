"""``mas reload [CONFIG]``: make the running server re-read mas.yaml, over its control socket.

The file is validated here first (``load_config``): an invalid one is reported
with status 2 and never sent. Operators may still send SIGHUP by hand.
"""

from __future__ import annotations

import argparse

from ..config import load_config
from ..control import socket_path
from ..control.client import ControlClient
from ..control.protocol import ReloadReply, ReloadRequest
from .exits import EXIT_OK


def run(args: argparse.Namespace) -> int:
    """Ask the server started from this config to re-read it; the exit status."""
    loaded = load_config(args.config)
    with ControlClient(socket_path(loaded), config_path=loaded.path) as client:
        reply = client.request(ReloadRequest())
    assert isinstance(reply, ReloadReply)
    print(f"the server reloaded {reply.config_path}")
    if reply.needs_restart:
        print(f"these settings apply only after a restart: {', '.join(reply.needs_restart)}")
    return EXIT_OK
