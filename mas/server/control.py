"""The server's control socket: `mas status`, `top`, `reload`, `dlq replay` and `dlq list`.

::

    serve_control(path, actions, audit)
    └── one task per client (at most MAX_CLIENTS): read a frame, act, answer; repeat

The protocol is ``mas.control.protocol``. The socket is made with mode 0600 next
to mas.yaml (``control_socket``); where the kernel tells the peer's credentials
(``SO_PEERCRED``, Linux), a client whose uid is not the server's is refused as
well, whatever the file's mode became. Every action is audited (``CONTROL``
records name the action, the peer's uid and pid, and the outcome): reload and
replay each time, a dead-letter listing once (not once per page), status once per
connection (``mas top`` asks every second).

A client cannot hurt the server: frames are bounded (``MAX_REQUEST_BYTES``), a
frame must arrive within ``READ_TIMEOUT`` once begun and the next one within
``IDLE_TIMEOUT``, an answer must be taken within ``WRITE_TIMEOUT``, clients past
``MAX_CLIENTS`` are told ``busy`` and closed, and a frame that does not decode
is answered ``bad_request`` and the connection closed. Nothing a client sends
reaches the server's other tasks except through ``actions``.

A socket file left by a server that died is replaced; one a live server listens
on is left alone (this server then runs without a control socket, and says so).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import stat
import struct
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Final, NamedTuple, Protocol

import trio

from ..audit.record import AuditDraft
from ..control.protocol import (
    HEADER,
    MAX_LISTED,
    MAX_LISTED_BYTES,
    MAX_REQUEST_BYTES,
    MAX_SOCKET_PATH,
    PROTOCOL_VERSION,
    DlqListRequest,
    DlqReplayRequest,
    ErrorReply,
    FrameError,
    ListedLetter,
    ListReply,
    ReloadReply,
    ReloadRequest,
    ReplayedMessage,
    ReplayReply,
    Reply,
    Request,
    StatusReply,
    StatusSnapshot,
    decode_request,
    encode_frame,
    frame_length,
)
from ..errors import MasError
from ..store import DeadLetter

log = logging.getLogger("mas.server.control")

MAX_CLIENTS: Final = 16  # control connections served at once; more are told `busy`
IDLE_TIMEOUT: Final = 60.0  # seconds a connection may wait between requests
READ_TIMEOUT: Final = 5.0  # seconds for the rest of a frame once its first byte came
WRITE_TIMEOUT: Final = 10.0  # seconds for a client to take an answer
BUSY_TIMEOUT: Final = 0.1  # seconds the accept loop spends telling a client `busy`
BACKLOG: Final = 16


class ControlActions(Protocol):
    """What the control socket may make the server do (the runtime implements it)."""

    async def status(self) -> StatusSnapshot: ...

    async def reload(self) -> ReloadReply: ...

    async def dlq_replay(
        self, message_ids: list[str] | None, operator: str
    ) -> list[ReplayedMessage]: ...

    async def dlq_list(self, request: DlqListRequest) -> ListReply: ...


def list_page(letters: Sequence[DeadLetter], start: int) -> ListReply:
    """The page of ``letters`` from ``start``: at most ``MAX_LISTED`` of them and
    ``MAX_LISTED_BYTES`` of envelopes (always at least one, so a listing moves on)."""
    page: list[ListedLetter] = []
    size = 0
    index = start
    for index in range(start, len(letters)):
        dead = letters[index]
        size += len(dead.message.envelope_json)
        if page and (len(page) == MAX_LISTED or size > MAX_LISTED_BYTES):
            return ListReply(letters=page, next_start=index)
        message = dead.message
        page.append(
            ListedLetter(
                message_id=message.message_id,
                target_id=message.target_id,
                envelope_json=message.envelope_json,
                attempt=message.attempt,
                reason=dead.reason,
                dead_lettered_at=dead.dead_lettered_at,
            )
        )
    return ListReply(letters=page)


class Peer(NamedTuple):
    """Who is at the other end of a connection, as the kernel says (None: not known)."""

    pid: int | None
    uid: int | None

    def __str__(self) -> str:
        if self.uid is None:
            return "a local client"
        return f"uid {self.uid} pid {self.pid}"


def peer_of(sock: trio.socket.SocketType) -> Peer:
    """The peer's pid and uid from ``SO_PEERCRED`` where the platform has it."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return Peer(None, None)
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i"))
    except OSError:
        return Peer(None, None)
    pid, uid, _gid = struct.unpack("3i", raw)
    return Peer(pid, uid)


def claim_path(path: Path) -> bool:
    """Make ``path`` free for this server's socket; False (with a warning) if it cannot be.

    A socket nobody listens on is a leftover of a server that died: removed. A live
    one belongs to another server started from the same config: kept.
    """
    if len(bytes(path)) > MAX_SOCKET_PATH:
        log.warning(
            "control socket path %s is longer than %d bytes: no control socket (`mas status`, "
            "`mas reload` need one); set control_socket to a shorter path",
            path,
            MAX_SOCKET_PATH,
        )
        return False
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return True
    if not stat.S_ISSOCK(mode):
        log.warning("%s exists and is not a socket: no control socket (move that file)", path)
        return False
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except ConnectionRefusedError:
        path.unlink(missing_ok=True)  # nobody listens: a server that died left it
        return True
    except OSError as exc:
        log.warning("cannot check %s (%s): no control socket", path, exc.strerror or exc)
        return False
    finally:
        probe.close()
    log.warning(
        "another running server listens on %s: this one runs without a control socket "
        "(`mas status`, `mas reload` reach that one)",
        path,
    )
    return False


class _Reader:
    """Exact-size reads from a stream, buffered."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._buffer = bytearray()

    async def first_byte(self) -> bool:
        """Wait for the next frame to begin; False at end of stream."""
        if self._buffer:
            return True
        data = await self._stream.receive_some(MAX_REQUEST_BYTES)
        self._buffer += data
        return bool(data)

    async def exactly(self, size: int) -> bytes:
        while len(self._buffer) < size:
            data = await self._stream.receive_some(MAX_REQUEST_BYTES)
            if not data:
                raise trio.BrokenResourceError("the client closed mid-frame")
            self._buffer += data
        out = bytes(self._buffer[:size])
        del self._buffer[:size]
        return out


class ControlServer:
    """Serves the control socket at ``path`` for ``actions``; audits through ``audit``."""

    def __init__(
        self,
        path: Path,
        actions: ControlActions,
        audit: Callable[[AuditDraft], Awaitable[None]],
        *,
        now: Callable[[], float] = time.time,
        uid: int | None = None,
    ) -> None:
        """``uid``: the user allowed to connect (default: the one the server runs as)."""
        self.path = path
        self._uid = os.geteuid() if uid is None else uid
        self._actions = actions
        self._audit = audit
        self._now = now
        self.active = 0
        self.refused = 0  # connections refused: busy, or another user

    async def serve(
        self, *, task_status: trio.TaskStatus[Path | None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen until cancelled; reports the socket path (None: running without one)."""
        if not await trio.to_thread.run_sync(claim_path, self.path):
            task_status.started(None)
            return
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            await sock.bind(str(self.path))
        except OSError as exc:
            sock.close()
            log.warning(
                "cannot make the control socket %s (%s): `mas status` and `mas reload` "
                "will not reach this server",
                self.path,
                exc.strerror or exc,
            )
            task_status.started(None)
            return
        inode = os.stat(self.path).st_ino
        try:
            os.chmod(self.path, 0o600)
            sock.listen(BACKLOG)
            listener = trio.SocketListener(sock)
            log.info("control socket %s", self.path)
            async with trio.open_nursery() as nursery:
                task_status.started(self.path)
                await self._accept(listener, nursery)
        finally:
            sock.close()
            with contextlib.suppress(OSError):
                if os.stat(self.path).st_ino == inode:  # never another server's socket
                    self.path.unlink()

    async def _accept(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:  # out of file descriptors: wait, do not spin
                if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    raise
                log.warning("control socket: cannot accept (%s); pausing", exc.strerror)
                await trio.sleep(0.1)
                continue
            if self.active >= MAX_CLIENTS:
                self.refused += 1
                busy = ErrorReply(code="busy", message="too many control clients")
                with trio.move_on_after(BUSY_TIMEOUT):
                    with contextlib.suppress(trio.BrokenResourceError, OSError):
                        await stream.send_all(encode_frame(busy))
                await trio.aclose_forcefully(stream)
                continue
            self.active += 1
            nursery.start_soon(self._client, stream)

    async def _client(self, stream: trio.SocketStream) -> None:
        try:
            async with stream:
                await self._converse(stream)
        except (trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            log.debug("control client gone or too slow", exc_info=True)
        finally:
            self.active -= 1

    async def _converse(self, stream: trio.SocketStream) -> None:
        peer = peer_of(stream.socket)
        if peer.uid is not None and peer.uid != self._uid:
            self.refused += 1
            await self._record(f"refused {peer}: not the user the server runs as")
            message = f"the server runs as uid {self._uid}, you are uid {peer.uid}"
            await self._answer(stream, ErrorReply(code="not_allowed", message=message))
            return
        reader = _Reader(stream)
        status_audited = False
        while True:
            began = False
            with trio.move_on_after(IDLE_TIMEOUT):
                began = await reader.first_byte()
            if not began:  # closed, or idle too long
                return
            with trio.fail_after(READ_TIMEOUT):
                try:
                    length = frame_length(await reader.exactly(HEADER.size), MAX_REQUEST_BYTES)
                    request = decode_request(await reader.exactly(length))
                except FrameError as exc:
                    await self._answer(stream, ErrorReply(code="bad_request", message=str(exc)))
                    return
            if request.version != PROTOCOL_VERSION:
                message = f"protocol version {request.version} is not {PROTOCOL_VERSION}"
                await self._answer(stream, ErrorReply(code="bad_request", message=message))
                return
            reply = await self._act(request, peer, audit_status=not status_audited)
            status_audited = status_audited or isinstance(reply, StatusReply)
            await self._answer(stream, reply)

    async def _act(self, request: Request, peer: Peer, *, audit_status: bool) -> Reply:
        try:
            if isinstance(request, ReloadRequest):
                outcome = await self._actions.reload()
                waits = f" ({', '.join(outcome.needs_restart)} need a restart)"
                await self._record(
                    f"reload by {peer}: applied" + (waits if outcome.needs_restart else "")
                )
                return outcome
            if isinstance(request, DlqReplayRequest):
                replayed = await self._actions.dlq_replay(request.message_ids, request.operator)
                await self._record(f"dlq replay by {peer}: {len(replayed)} message(s)")
                return ReplayReply(replayed=replayed)
            if isinstance(request, DlqListRequest):
                page = await self._actions.dlq_list(request)
                if request.start == 0:  # a listing is audited once, not once per page
                    await self._record(f"dlq list by {peer}")
                return page
            snapshot = await self._actions.status()
            if audit_status:
                await self._record(f"status by {peer}")
            return StatusReply(status=snapshot)
        except MasError as exc:
            await self._record(f"{_op(request)} by {peer}: failed: {exc}")
            return ErrorReply(code="failed", message=str(exc))
        except Exception:
            log.exception("control %s by %s failed", _op(request), peer)
            await self._record(f"{_op(request)} by {peer}: failed: internal error")
            return ErrorReply(code="failed", message="internal error: see the server's log")

    async def _answer(self, stream: trio.SocketStream, reply: Reply) -> None:
        with trio.fail_after(WRITE_TIMEOUT):
            await stream.send_all(encode_frame(reply))

    async def _record(self, reason: str) -> None:
        await self._audit(AuditDraft(time=self._now(), decision="CONTROL", reason=reason))


def _op(request: Request) -> str:
    if isinstance(request, ReloadRequest):
        return "reload"
    if isinstance(request, DlqReplayRequest):
        return "dlq replay"
    if isinstance(request, DlqListRequest):
        return "dlq list"
    return "status"
