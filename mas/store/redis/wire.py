"""RESP2 on the event loop: the Redis lane's round trips without a thread hop.

``redis-py`` opens the connection (TCP or Unix socket, TLS, ``AUTH``, ``SELECT``,
``CLIENT SETNAME``: everything a Redis URL can ask for) in a worker thread, once.
Its socket (a plain socket or an ``ssl.SSLSocket``) is then switched to
non-blocking mode and driven from Trio with ``wait_readable`` / ``wait_writable``:
one round trip of the lane costs a ``send`` and a ``recv`` on the event loop
instead of two thread hand-offs (about 90 µs of CPU each on our machines).

``pack`` encodes commands as ``redis-py`` does (str as UTF-8, int as decimal,
float as ``repr``); ``Replies`` parses RESP2 replies as ``redis-py``'s raw
replies are: bytes for simple and bulk strings, int, list, None, and a
``ResponseError`` (``NoScriptError`` for ``NOSCRIPT``) *instance* for an error
reply, which the caller inspects instead of catching.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Sequence
from typing import Any, Final

import trio
from redis.exceptions import NoScriptError, ResponseError

Arg = str | bytes | int | float
Command = tuple[Arg, ...]

READ_SIZE: Final = 256 * 1024  # bytes asked of one recv


class ProtocolError(Exception):
    """Redis sent something that is not RESP2."""


def _encode(arg: Arg) -> bytes:
    if isinstance(arg, bytes):
        return arg
    if isinstance(arg, str):
        return arg.encode()
    if isinstance(arg, bool):  # an int, but redis-py refuses it: so do we
        raise TypeError("a bool is not a Redis argument; pass 0/1 or a string")
    if isinstance(arg, int):
        return b"%d" % arg
    if isinstance(arg, float):
        return repr(arg).encode()
    raise TypeError(f"not a Redis argument: {type(arg).__name__}")


def pack(commands: Sequence[Command]) -> bytes:
    """The commands as one RESP2 pipeline."""
    parts: list[bytes] = []
    for command in commands:
        parts.append(b"*%d\r\n" % len(command))
        for arg in command:
            data = _encode(arg)
            parts.append(b"$%d\r\n" % len(data))
            parts.append(data)
            parts.append(b"\r\n")
    return b"".join(parts)


class _Incomplete(Exception):
    """The buffer ends inside a reply; ``need`` is the length it must reach at least."""

    def __init__(self, need: int) -> None:
        self.need = need


def _error(message: str) -> ResponseError:
    return NoScriptError(message) if message.startswith("NOSCRIPT") else ResponseError(message)


def _line_end(buf: bytearray, pos: int) -> int:
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise _Incomplete(len(buf) + 1)
    return end


def _parse(buf: bytearray, pos: int) -> tuple[Any, int]:
    """One reply starting at ``pos``; the reply and the position after it."""
    if pos >= len(buf):
        raise _Incomplete(pos + 1)
    kind = buf[pos]
    end = _line_end(buf, pos + 1)
    head = bytes(buf[pos + 1 : end])
    pos = end + 2
    if kind == 0x24:  # $ bulk string
        length = int(head)
        if length < 0:
            return None, pos
        if len(buf) < pos + length + 2:
            raise _Incomplete(pos + length + 2)
        return bytes(buf[pos : pos + length]), pos + length + 2
    if kind == 0x3A:  # : integer
        return int(head), pos
    if kind == 0x2A:  # * array
        count = int(head)
        if count < 0:
            return None, pos
        items = []
        for _ in range(count):
            item, pos = _parse(buf, pos)
            items.append(item)
        return items, pos
    if kind == 0x2B:  # + simple string
        return head, pos
    if kind == 0x2D:  # - error
        return _error(head.decode(errors="replace")), pos
    raise ProtocolError(f"unexpected RESP2 type byte {bytes([kind])!r}")


class _ReplyEnd:
    """Finds where a reply ends, resuming across chunks (linear in the reply's size).

    Parsing a large array again from its start on every chunk would be quadratic;
    this scan keeps its place (a position and the items left at each depth) and
    skips bulk strings by their length, so the reply is parsed once, when whole.
    """

    __slots__ = ("left", "pos")

    def __init__(self, start: int) -> None:
        self.pos = start
        self.left = [1]  # items still to read at each depth: one reply

    def scan(self, buf: bytearray) -> int | None:
        """The position after the reply, or None if ``buf`` does not hold all of it."""
        left, pos, size = self.left, self.pos, len(buf)
        while left:
            if left[-1] == 0:
                left.pop()
                continue
            end = buf.find(b"\r\n", pos + 1) if pos < size else -1
            if end < 0:
                break
            kind = buf[pos]
            if kind == 0x24:  # $ bulk string: skip its body
                length = int(buf[pos + 1 : end])
                after = end + 2 + (length + 2 if length >= 0 else 0)
                if after > size:
                    break
                pos = after
                left[-1] -= 1
            elif kind == 0x2A:  # * array: its items come next
                count = int(buf[pos + 1 : end])
                pos = end + 2
                left[-1] -= 1
                if count > 0:
                    left.append(count)
            elif kind in (0x2B, 0x2D, 0x3A):  # + - :
                pos = end + 2
                left[-1] -= 1
            else:
                raise ProtocolError(f"unexpected RESP2 type byte {bytes([kind])!r}")
        self.pos = pos
        return None if left else pos


class WireSocket:
    """A connected socket from ``redis-py``, driven without blocking from Trio."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._buffer = bytearray()

    def stale(self) -> bool:
        """Whether the idle connection was closed, or holds bytes nobody asked for.

        Checked before a pipeline is sent, so that a connection Redis dropped
        (a restart) is replaced before anything is sent on it, rather than
        failing a batch that may or may not have run.
        """
        if self._buffer:
            return True
        try:
            peeked = socket.socket.recv(self._sock, 1, socket.MSG_PEEK)  # the raw bytes
        except BlockingIOError:
            return False
        except OSError:
            return True
        if peeked and isinstance(self._sock, ssl.SSLSocket):
            # Under TLS the bytes may be a protocol record (a session ticket, a key
            # update): let the TLS layer read it; only data or a close is stale.
            try:
                self._sock.recv(1)
            except ssl.SSLWantReadError:
                return False
            except OSError:  # includes ssl.SSLError
                return True
        return True  # b"": closed by Redis; data: a reply nobody waits for

    async def round_trip(self, commands: Sequence[Command]) -> list[Any]:
        """Send ``commands`` as one pipeline and read one reply per command."""
        return await self.round_trip_packed(pack(commands), len(commands))

    async def round_trip_packed(self, pipeline: bytes, count: int) -> list[Any]:
        """Send a pipeline ``pack`` made of ``count`` commands; one reply per command."""
        await self._send_all(pipeline)
        replies: list[Any] = []
        buf, pos = self._buffer, 0
        try:
            while len(replies) < count:
                end = _ReplyEnd(pos)
                while end.scan(buf) is None:
                    await self._receive_into(buf)
                reply, pos = _parse(buf, pos)  # whole: parsed once
                replies.append(reply)
        except (ValueError, IndexError, _Incomplete) as exc:
            raise ProtocolError(f"malformed RESP2 reply: {exc!r}") from exc
        del buf[:pos]
        return replies

    async def _send_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                sent = self._sock.send(view)
            except ssl.SSLWantReadError:
                await trio.lowlevel.wait_readable(self._sock)
            except (ssl.SSLWantWriteError, BlockingIOError):
                await trio.lowlevel.wait_writable(self._sock)
            else:
                view = view[sent:]

    async def _receive_into(self, buf: bytearray) -> None:
        while True:
            try:
                chunk = self._sock.recv(READ_SIZE)
            except (ssl.SSLWantReadError, BlockingIOError):
                await trio.lowlevel.wait_readable(self._sock)
            except ssl.SSLWantWriteError:
                await trio.lowlevel.wait_writable(self._sock)
            else:
                if not chunk:
                    raise ConnectionError("Redis closed the connection")
                buf += chunk
                return
