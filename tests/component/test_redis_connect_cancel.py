"""A connect to a Redis that never answers is abandoned by a cancel, not waited out."""

from __future__ import annotations

import socket
import time

import trio
from store_contract import LIMITS

from mas.store.redis import open_redis_store

SOCKET_TIMEOUT = 30.0  # what a connect to a silent Redis would block its thread for


async def test_a_cancelled_start_does_not_wait_for_a_silent_redis() -> None:
    """A stop or Ctrl-C during start returns at once, not after the socket timeout.

    The connect runs in a worker thread blocked on the silent socket; before, the
    cancel waited for that thread (the socket timeout, 5 s by default), so Ctrl-C
    during a start against a hung Redis took seconds to take effect.
    """
    with socket.socket() as listener:  # accepts (the kernel's backlog), never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
        began = time.monotonic()
        with trio.move_on_after(0.5) as scope:
            async with open_redis_store(url, LIMITS, socket_timeout=SOCKET_TIMEOUT):
                raise AssertionError("a silent Redis opened as a store")
        waited = time.monotonic() - began
    assert scope.cancelled_caught
    assert waited < SOCKET_TIMEOUT / 3, f"the cancel waited {waited:.1f} s for the connect"
