"""A small, bounded HTTP/1.1 server under Trio for ``/metrics``, ``/healthz`` and ``/readyz``.

It serves ``GET`` (and ``HEAD``) of a few fixed paths, one request per connection
(``Connection: close``): that is all a Prometheus scraper or an orchestrator's
probe does, and it keeps the server free of keep-alive and pipelining state.
The request head is parsed by ``parse_request_head`` (pure); bodies are refused.

Bounds: at most ``MAX_CONNECTIONS`` connections at once (more are closed at
once), a request head of at most ``MAX_HEAD_BYTES`` that must arrive within
``READ_TIMEOUT`` seconds, and an answer the client must take within
``WRITE_TIMEOUT`` seconds. Nothing a client sends can stop the server.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Awaitable, Callable
from typing import Final, NamedTuple

import trio

from ..errors import ConfigError

log = logging.getLogger("mas.server.http")

MAX_CONNECTIONS: Final = 32  # HTTP connections at once; scrapers and probes need few
MAX_HEAD_BYTES: Final = 8_192  # request line and headers
READ_TIMEOUT: Final = 5.0  # seconds for the whole request head
WRITE_TIMEOUT: Final = 10.0  # seconds for the client to take the answer
# After refusing a request it has not read to the end, the server reads (and drops) up to
# LINGER_BYTES more for up to LINGER_TIMEOUT seconds before closing: closing with unread
# input makes the kernel reset the connection, and the client would lose the answer.
LINGER_TIMEOUT: Final = 1.0
LINGER_BYTES: Final = 65_536

_REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}


class Response(NamedTuple):
    """What a handler answers: status, body, and its content type."""

    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"


class Request(NamedTuple):
    method: str
    path: str  # without the query string


class HttpError(Exception):
    """A request this server will not serve: answered with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def parse_request_head(head: bytes) -> Request:
    """The method and path of a request head (up to and without its blank line).

    Raises ``HttpError``: 400 for a malformed head, 405 for a method other than GET or
    HEAD, 413 for a request that says it carries a body.
    """
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError as exc:
        raise HttpError(400, "the request head is not ASCII") from exc
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise HttpError(400, "malformed request line")
    method, target, _version = parts
    if method not in ("GET", "HEAD"):
        raise HttpError(405, f"{method} is not served here: use GET")
    if not target.startswith("/"):
        raise HttpError(400, "the request target must be a path")
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise HttpError(400, "malformed header line")
        lowered = name.lower()
        if lowered == "transfer-encoding" or (lowered == "content-length" and value.strip() != "0"):
            raise HttpError(413, "requests with a body are not served here")
    return Request(method, target.partition("?")[0])


def render_response(response: Response, *, head_only: bool = False) -> bytes:
    """The bytes of ``response`` on the wire (``Connection: close``)."""
    reason = _REASONS.get(response.status, "Unknown")
    header = (
        f"HTTP/1.1 {response.status} {reason}\r\n"
        f"Content-Type: {response.content_type}\r\n"
        f"Content-Length: {len(response.body)}\r\n"
        "Connection: close\r\n"
        "Cache-Control: no-store\r\n"
        "\r\n"
    ).encode("ascii")
    return header if head_only else header + response.body


Handler = Callable[[str], Awaitable[Response | None]]  # path -> response (None: 404)


class HttpServer:
    """Serves ``handler`` on ``host:port``; see the module docstring for the bounds."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self.active = 0
        self.refused = 0  # connections closed at once: over MAX_CONNECTIONS
        self.address: tuple[str, int] | None = None

    async def serve(
        self,
        host: str,
        port: int,
        *,
        task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen until cancelled; reports the bound (host, port).

        Raises ``ConfigError`` when the address cannot be bound (in use, not local).
        """
        try:
            listeners = await trio.open_tcp_listeners(port, host=host)
        except OSError as exc:
            raise ConfigError(
                f"cannot serve /metrics on {host}:{port} ({exc.strerror or exc}): choose another "
                "gateway.telemetry.prometheus host or port, or stop what uses it"
            ) from exc
        try:
            sockname = listeners[0].socket.getsockname()
            self.address = (str(sockname[0]), int(sockname[1]))
            async with trio.open_nursery() as nursery:
                for listener in listeners:
                    nursery.start_soon(self._accept, listener, nursery)
                task_status.started(self.address)
        finally:
            for listener in listeners:
                await trio.aclose_forcefully(listener)

    async def _accept(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    raise
                log.warning("metrics endpoint: cannot accept (%s); pausing", exc.strerror)
                await trio.sleep(0.1)
                continue
            if self.active >= MAX_CONNECTIONS:
                self.refused += 1
                await trio.aclose_forcefully(stream)
                continue
            self.active += 1
            nursery.start_soon(self._connection, stream)

    async def _connection(self, stream: trio.SocketStream) -> None:
        try:
            async with stream:
                response, head_only = await self._respond(stream)
                with trio.fail_after(WRITE_TIMEOUT):
                    await stream.send_all(render_response(response, head_only=head_only))
                if response.status >= 400:
                    await _linger(stream)
        except (trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            log.debug("metrics client gone or too slow", exc_info=True)
        finally:
            self.active -= 1

    async def _respond(self, stream: trio.SocketStream) -> tuple[Response, bool]:
        head = bytearray()
        with trio.move_on_after(READ_TIMEOUT) as reading:
            while b"\r\n\r\n" not in head:
                if len(head) > MAX_HEAD_BYTES:
                    return Response(431, b"request head too large\n"), False
                data = await stream.receive_some(MAX_HEAD_BYTES)
                if not data:
                    raise trio.BrokenResourceError("closed before a whole request")
                head += data
        if reading.cancelled_caught:
            raise trio.TooSlowError
        end = head.index(b"\r\n\r\n")
        if end > MAX_HEAD_BYTES:
            return Response(431, b"request head too large\n"), False
        try:
            request = parse_request_head(bytes(head[:end]))
        except HttpError as exc:
            return Response(exc.status, f"{exc}\n".encode()), False
        response = await self._handler(request.path)
        if response is None:
            response = Response(404, b"not found: try /metrics, /healthz or /readyz\n")
        return response, request.method == "HEAD"


async def _linger(stream: trio.SocketStream) -> None:
    """Say we are done sending, then drop what the client still sends (bounded)."""
    with trio.move_on_after(LINGER_TIMEOUT):
        await stream.send_eof()
        dropped = 0
        while dropped < LINGER_BYTES and (data := await stream.receive_some(LINGER_BYTES)):
            dropped += len(data)
