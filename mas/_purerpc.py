"""Repairs of purerpc 0.8 resource handling, shared by the server and client adapters.

purerpc leaves three things undone that a long-running Trio program needs:

* it never closes the in-memory event channel of an RPC stream (anyio warns
  about each one when it is garbage-collected): ``release_stream``;
* on the client, it never closes the TLS socket under a channel, and when the
  connection drops its reader task just ends, so every open stream waits
  forever: ``open_channel`` ends each open stream with ``UNAVAILABLE
  connection_lost`` instead, marks the channel closed, and closes the socket on
  exit.

purerpc is pinned to 0.8.0, whose internals these rely on.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, Final

import anyio
import h2.exceptions
import trio
from purerpc.grpc_proto import GRPCProtoSocket
from purerpc.grpclib.config import GRPCConfiguration
from purerpc.grpclib.events import ResponseEnded
from purerpc.grpclib.exceptions import ProtocolError
from purerpc.grpclib.status import Status, StatusCode

log = logging.getLogger("mas.transport")

CONNECTION_LOST: Final = "connection_lost"  # status message of streams cut by a dropped connection
_CLOSE_TIMEOUT: Final = 1.0  # seconds allowed to close a socket

_CONNECTION_ERRORS: Final = (
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
    h2.exceptions.ProtocolError,
    ProtocolError,
    ssl.SSLError,
    OSError,
    KeyError,  # purerpc indexes its stream table with ids a broken peer may send
)


def release_stream(stream: Any) -> None:
    """Close a finished purerpc stream's internal event channel (both ends)."""
    for end in getattr(stream, "_incoming_events", ()):
        end.close()


class _ClientSocket(GRPCProtoSocket):  # type: ignore[misc]
    """A client purerpc socket whose streams learn when the connection is gone."""

    closed = False

    async def _reader_thread(self) -> None:
        try:
            async for _ in self._listen():
                raise ProtocolError("server opened a stream toward the client")
        except _CONNECTION_ERRORS as exc:
            log.debug("connection lost: %r", exc)
        finally:
            self.closed = True
            lost = Status(StatusCode.UNAVAILABLE, status_message=CONNECTION_LOST)
            for stream in list(self._streams.values()):
                if stream._end_stream_event is None:
                    with contextlib.suppress(
                        anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError
                    ):
                        stream._incoming_events[0].send_nowait(
                            ResponseEnded(stream.stream_id, lost)
                        )


class Channel:
    """What ``purerpc.Client`` needs of a channel, plus ``closed``."""

    def __init__(self, host: str, port: int, grpc_socket: _ClientSocket) -> None:
        self._host = host
        self._port = port
        self._grpc_socket = grpc_socket

    @property
    def closed(self) -> bool:
        """True once the connection has dropped; new RPCs would never be answered."""
        return self._grpc_socket.closed


@asynccontextmanager
async def open_channel(host: str, port: int, ssl_context: ssl.SSLContext) -> AsyncIterator[Channel]:
    """Connect over TLS and yield a channel; on exit close its streams and socket.

    Connection errors (``OSError``, TLS failures) propagate from the connect.
    """
    stream = await anyio.connect_tcp(
        host, port, ssl_context=ssl_context, tls=True, tls_standard_compatible=False
    )
    grpc_socket = _ClientSocket(GRPCConfiguration(client_side=True), stream)
    try:
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(grpc_socket)
            yield Channel(host, port, grpc_socket)
    finally:
        grpc_socket.closed = True
        for open_stream in list(grpc_socket._streams.values()):
            release_stream(open_stream)
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + _CLOSE_TIMEOUT
            with contextlib.suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                await stream.aclose()
