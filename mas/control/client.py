"""The blocking control client the commands use (no Trio: one socket, one exchange at a time).

Error handling: every failure is a ``ControlError`` that says what is wrong and what
to do: no server running for this config (no socket, or a socket nobody listens on),
a socket of another user, a server that refused the request, or one that did not
answer within ``timeout`` seconds.
"""

from __future__ import annotations

import errno
import socket
from pathlib import Path
from types import TracebackType
from typing import Final

from ..errors import ControlError
from .protocol import (
    HEADER,
    MAX_REPLY_BYTES,
    MAX_SOCKET_PATH,
    ErrorReply,
    FrameError,
    Reply,
    Request,
    decode_reply,
    encode_frame,
    frame_length,
)

DEFAULT_TIMEOUT: Final = 10.0  # seconds for the server to answer one request


class ServerNotRunningError(ControlError):
    """No server listens on the config's control socket (no socket, or a dead one's)."""


def not_running(config_path: Path | str) -> ServerNotRunningError:
    """The error for a config whose server is not running."""
    return ServerNotRunningError(
        f"no server is running for {config_path}: start it with `mas serve {config_path}` "
        f"or `mas run {config_path}`"
    )


class ControlClient:
    """One connection to a server's control socket; use as a context manager."""

    def __init__(
        self, path: Path, *, config_path: Path | str, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        self.path = path
        self._config_path = config_path
        self._timeout = timeout
        self._sock: socket.socket | None = None

    def __enter__(self) -> ControlClient:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def connect(self) -> None:
        """Open the connection; ``ControlError`` when no server answers there."""
        if len(bytes(self.path)) > MAX_SOCKET_PATH:
            raise ControlError(
                f"the control socket path {self.path} is longer than {MAX_SOCKET_PATH} bytes, "
                "which Unix sockets cannot use: set control_socket in "
                f"{self._config_path} to a shorter path and restart the server"
            )
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self._timeout)
        try:
            sock.connect(str(self.path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            sock.close()
            raise not_running(self._config_path) from exc
        except PermissionError as exc:
            sock.close()
            raise ControlError(
                f"not allowed to open the control socket {self.path}: it belongs to the user "
                "the server runs as; run this command as that user"
            ) from exc
        except OSError as exc:
            sock.close()
            if exc.errno == errno.ENOTSOCK:
                raise not_running(self._config_path) from exc
            raise ControlError(f"cannot connect to {self.path}: {exc.strerror or exc}") from exc
        self._sock = sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def request(self, request: Request) -> Reply:
        """Send one request and return the server's reply (an ``ErrorReply`` is raised)."""
        if self._sock is None:
            self.connect()
        assert self._sock is not None
        try:
            self._sock.sendall(encode_frame(request))
            length = frame_length(self._read(HEADER.size), MAX_REPLY_BYTES)
            reply = decode_reply(self._read(length))
        except TimeoutError as exc:
            raise ControlError(
                f"the server did not answer within {self._timeout:g} s on {self.path}"
            ) from exc
        except FrameError as exc:
            raise ControlError(
                f"the server on {self.path} sent a reply this client cannot read ({exc}); "
                "is it running another version of mas?"
            ) from exc
        except OSError as exc:
            raise ControlError(
                f"the server on {self.path} closed the connection ({exc.strerror or exc}); "
                "it may have stopped: see its log"
            ) from exc
        if isinstance(reply, ErrorReply):
            raise ControlError(_explain(reply, self.path))
        return reply

    def _read(self, size: int) -> bytes:
        assert self._sock is not None
        chunks: list[bytes] = []
        remaining = size
        while remaining:
            chunk = self._sock.recv(min(remaining, 1 << 20))
            if not chunk:
                raise ConnectionResetError(errno.ECONNRESET, "connection closed")
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)


def _explain(reply: ErrorReply, path: Path) -> str:
    if reply.code == "not_allowed":
        return (
            f"the server refused this user on {path} ({reply.message}); run this command "
            "as the user the server runs as"
        )
    if reply.code == "busy":
        return f"the server on {path} is serving too many control clients; try again"
    return reply.message
