"""What other tasks ask of the connection: frames, acks, unary calls, and their waits.

``Outbox`` holds the current connection (``Live``) while there is one, and every wait on it:
a frame's ``Result`` (by sequence number, per connection) and a request's reply (by
correlation id, across connections). The connection task (``Connector``) attaches and detaches
connections and feeds ``settle`` and ``reply_arrived`` from the server's frames; everything
else calls ``send``, ``request``, ``reply``, ``ack``, ``nack`` and ``unary``, which wait for a
connection within their own deadline while the connector reconnects.

``send``, ``request`` and ``reply`` go as frames on the Transport stream when the server's
``Welcome`` announces ``stream_messages`` (a mas server); toward a server that does not (one
of mas-framework 0.4, which ignores those frames) they go as the unary ``Send``,
``Request`` and ``Reply`` RPCs, naming the instance the Welcome bound. Either way the
caller sees the same results and errors; the reply to a request comes on the stream.

Error handling
    A frame whose connection drops before its ``Result`` fails with ``ConnectionClosedError``
    (its fate is unknown). A ``Result`` that does not come within ``rpc_timeout`` is a
    ``RequestTimeoutError``; so is a reply that does not come before the request's deadline,
    whose message says whether the connection was down meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import trio

from .._proto import runtime_pb2 as pb
from ..envelope import Envelope
from ..errors import ConnectionClosedError, MasError, RequestTimeoutError, rejected_error
from .client import Channel, Transport, call_unary
from .stream import FrameKind, FrameResult, ReplyArrived, StreamState

MAX_TIMEOUT_MS: Final = 2**31 - 1  # StreamRequest.timeout_ms is an int32
MAX_NACK_REASON: Final = 200  # characters of a nack reason the server keeps


class Live:
    """One connection: its channel, Transport stream and the frames waiting on it."""

    def __init__(
        self, channel: Channel, transport: Transport, welcome: pb.Welcome, generation: int
    ) -> None:
        self.channel = channel
        self.transport = transport
        self.welcome = welcome
        self.generation = generation
        self.alive = True
        self.frames: dict[int, Slot] = {}
        self.calls: set[trio.CancelScope] = set()
        self.scope = trio.CancelScope()  # cancelled to end this connection
        self.since = trio.current_time()


class Slot:
    """One outbound frame's wait: its Result, then, for a request, its reply.

    A request frame's task waits once, on ``replied``, for both: within the Result's
    deadline first, which its accepted Result moves on to the reply's (``wait``), so an
    accepted request wakes its task only when the reply is in (or on an error).
    """

    __slots__ = ("error", "replied", "reply", "reply_deadline", "result", "settled", "wait")

    def __init__(self, reply_deadline: float | None = None) -> None:
        self.settled = trio.Event()
        self.result: FrameResult | None = None
        self.error: MasError | None = None
        self.replied = trio.Event()
        self.reply: Envelope | None = None
        self.reply_deadline = reply_deadline  # a request frame's: its reply is awaited with it
        self.wait: trio.CancelScope | None = None  # the request's wait, while it waits


class Outbox:
    """The connection as seen by the agent's other tasks (see the module docstring)."""

    def __init__(self, *, label: str, address: str, rpc_timeout: float) -> None:
        self.label = label
        self.address = address
        self.rpc_timeout = rpc_timeout
        self.core = StreamState()
        self.live: Live | None = None
        self.generation = 0  # increases with every connection
        self.drops = 0
        self.last_error: BaseException | None = None
        self._closed_reason: str | None = None
        self._changed = trio.Event()
        self._replies: dict[str, Slot] = {}

    # -- the connector tells us ------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self.live is not None and self.live.alive

    def notify(self) -> None:
        """Wake every task waiting for the connection to change."""
        self._changed.set()
        self._changed = trio.Event()

    async def wait_changed(self) -> None:
        await self._changed.wait()

    def attach(self, channel: Channel, transport: Transport, welcome: pb.Welcome) -> Live:
        self.generation += 1
        self.live = Live(channel, transport, welcome, self.generation)
        self.notify()
        return self.live

    def detach(self, live: Live) -> None:
        """The connection is gone: fail its frames, cancel its unary calls."""
        live.alive = False
        if self.live is live:
            self.live = None
        self.drops += 1
        self.core.connection_lost()
        for slot in live.frames.values():
            slot.error = ConnectionClosedError(
                f"{self.label}: the connection to {self.address} was lost before the server "
                "confirmed this message; whether it was delivered is unknown"
            )
            slot.settled.set()
            slot.replied.set()  # a request frame's task waits on this one
        live.frames.clear()
        for scope in live.calls:
            scope.cancel()
        self.notify()

    def close(self, reason: str) -> None:
        """No connection will come any more: waiting callers fail at once."""
        self._closed_reason = reason
        self.notify()

    def settle(self, live: Live, result: FrameResult) -> None:
        slot = live.frames.pop(result.seq, None)
        if slot is not None:
            slot.result = result
            if result.kind == "request" and result.error is None:
                self._replies[result.correlation_id] = slot
                if slot.wait is not None and slot.reply_deadline is not None:
                    slot.wait.deadline = slot.reply_deadline  # now wait for the reply
            elif slot.reply_deadline is not None:
                slot.replied.set()  # refused: its task learns it now
            slot.settled.set()

    def reply_arrived(self, arrived: ReplyArrived) -> bool:
        """Hand a reply to its requester; False if nobody waits for it any more."""
        slot = self._replies.pop(arrived.correlation_id, None)
        if slot is None:
            return False
        slot.reply = arrived.envelope
        slot.replied.set()
        return True

    # -- other tasks ask ------------------------------------------------------------------

    async def wait_live(self, deadline: float, what: str) -> Live:
        """The live connection, waiting for one until ``deadline``."""
        while True:
            live = self.live
            if live is not None and live.alive:
                return live
            if self._closed_reason is not None:
                raise ConnectionClosedError(f"{self.label}: cannot {what}: {self._closed_reason}")
            with trio.move_on_at(deadline):
                await self._changed.wait()
                continue
            raise ConnectionClosedError(
                f"{self.label}: cannot {what}, not connected to {self.address} "
                f"(reconnecting; last error: {self.last_error})"
            )

    async def send(self, target_id: str, message_type: str, data_json: str) -> str:
        """Send a message; returns its message id once the server accepted it."""
        deadline = trio.current_time() + self.rpc_timeout
        what = f"send {message_type!r} to {target_id!r}"
        live = await self.wait_live(deadline, what)
        if not live.welcome.stream_messages:
            request = pb.SendRequest(
                target_id=target_id,
                message_type=message_type,
                data_json=data_json,
                instance_id=live.welcome.instance_id,
            )
            sent = await self._unary_on(live, "Send", request, pb.SendResponse, deadline)
            return str(sent.message_id)
        frame = pb.StreamSend(target_id=target_id, message_type=message_type, data_json=data_json)
        result, _ = await self._frame("send", lambda seq: _with_seq(frame, seq), deadline, what)
        return result.message_id

    async def reply(self, correlation_id: str, message_type: str, data_json: str) -> str:
        """Reply to a request; returns the reply's message id once the server accepted it."""
        message_id, _ = await self.reply_acking(correlation_id, message_type, data_json, None)
        return message_id

    async def reply_acking(
        self,
        correlation_id: str,
        message_type: str,
        data_json: str,
        answering: tuple[int, str] | None,
    ) -> tuple[str, bool]:
        """``reply``, also acking ``answering`` (the request's generation and delivery id).

        The second value is True when the accepted reply acked that delivery too: the
        server's Welcome took ``reply_acks`` and the delivery is of this connection. Then
        no Ack is due for it; otherwise (and whenever the reply raises) the caller acks.
        """
        deadline = trio.current_time() + self.rpc_timeout
        what = f"reply {message_type!r}"
        live = await self.wait_live(deadline, what)
        if not live.welcome.stream_messages:
            request = pb.ReplyRequest(
                correlation_id=correlation_id,
                message_type=message_type,
                data_json=data_json,
                instance_id=live.welcome.instance_id,
            )
            replied = await self._unary_on(live, "Reply", request, pb.ReplyResponse, deadline)
            return str(replied.message_id), False
        delivery_id = ""
        if answering is not None and live.welcome.reply_acks and answering[0] == live.generation:
            delivery_id = answering[1]
        frame = pb.StreamReply(
            correlation_id=correlation_id,
            message_type=message_type,
            data_json=data_json,
            delivery_id=delivery_id,
        )
        result, _ = await self._frame("reply", lambda seq: _with_seq(frame, seq), deadline, what)
        # On another connection than ``live`` (a reconnect in between) the server acks
        # nothing: that delivery is redelivered anyway, and an Ack for it is a no-op.
        return result.message_id, bool(delivery_id)

    async def request(
        self, target_id: str, message_type: str, data_json: str, deadline: float
    ) -> Envelope:
        """Send a request and return its reply envelope, waiting until ``deadline``."""
        start = trio.current_time()
        drops = self.drops
        what = f"request {message_type!r} to {target_id!r}"

        def frame(seq: int) -> pb.ClientEvent:
            request = pb.StreamRequest(
                seq=seq,
                target_id=target_id,
                message_type=message_type,
                data_json=data_json,
                timeout_ms=_remaining_ms(deadline),
            )
            return pb.ClientEvent(request=request)

        result_deadline = min(deadline, start + self.rpc_timeout)
        live = await self.wait_live(result_deadline, what)
        if live.welcome.stream_messages:
            result, slot = await self._frame(
                "request", frame, result_deadline, what, reply_deadline=deadline
            )
            cid = result.correlation_id
        else:
            unary = pb.RequestRequest(
                target_id=target_id,
                message_type=message_type,
                data_json=data_json,
                instance_id=live.welcome.instance_id,
            )
            cid, slot = await self._unary_request(live, unary, deadline, result_deadline)
        try:
            if slot.reply is None:  # (a request frame's wait may have seen it come already)
                with trio.move_on_at(deadline):
                    await slot.replied.wait()
        finally:
            if slot.reply is None:
                self._replies.pop(cid, None)
                self.core.stop_awaiting(cid)
        if slot.reply is not None:
            return slot.reply
        if not self.connected:
            state = "the connection to the server is down"
        elif self.drops != drops:
            state = "the connection to the server dropped meanwhile and was restored"
        else:
            state = "the connection to the server was up throughout"
        raise RequestTimeoutError(
            f"{self.label}: no reply to {what} within {deadline - start:g}s ({state})"
        )

    async def _unary_request(
        self, live: Live, request: pb.RequestRequest, deadline: float, result_deadline: float
    ) -> tuple[str, Slot]:
        """Send a request through the unary ``Request`` RPC; its correlation id and reply slot.

        For a server that does not announce the stream fast path. The reply still comes as
        a delivery on the stream, possibly before the RPC's answer (``StreamState`` keeps it).
        """
        self.core.begin_unary_request()
        cid = ""
        try:
            request.timeout_ms = _remaining_ms(deadline)
            response = await self._unary_on(
                live, "Request", request, pb.RequestResponse, result_deadline
            )
            cid = str(response.correlation_id)
            if not cid:
                raise rejected_error("INTERNAL", "missing_correlation_id")
        finally:
            early = self.core.end_unary_request(cid or None)
        slot = Slot()
        if early is not None:
            slot.reply = early
            slot.replied.set()
        else:
            self._replies[cid] = slot
        return cid, slot

    async def _frame(
        self,
        kind: FrameKind,
        build: Callable[[int], pb.ClientEvent],
        result_deadline: float,
        what: str,
        *,
        reply_deadline: float | None = None,
    ) -> tuple[FrameResult, Slot]:
        """Write a frame and wait for its Result; with ``reply_deadline`` (a request), for
        its reply too, in the same wait (see ``Slot``)."""
        waited = result_deadline - trio.current_time()
        live = await self.wait_live(result_deadline, what)
        seq = self.core.open_frame(kind)
        slot = Slot(reply_deadline)
        live.frames[seq] = slot
        try:
            await _write(live, build(seq))
            if reply_deadline is None:
                with trio.move_on_at(result_deadline):
                    await slot.settled.wait()
            else:
                with trio.move_on_at(result_deadline) as slot.wait:
                    await slot.replied.wait()
                slot.wait = None
        finally:
            if not slot.settled.is_set():
                live.frames.pop(seq, None)
                if live.alive:
                    self.core.abandon_frame(seq)
        if slot.error is not None:
            raise slot.error
        if slot.result is None:
            raise RequestTimeoutError(
                f"{self.label}: the server did not confirm {what} within {waited:.3g}s; "
                "whether it was delivered is unknown"
            )
        if slot.result.error is not None:
            raise slot.result.error
        return slot.result, slot

    def _current(self, generation: int) -> Live | None:
        live = self.live
        if live is None or not live.alive or live.generation != generation:
            return None
        return live

    async def ack(self, generation: int, delivery_id: str) -> None:
        """Ack a delivery of connection ``generation`` (a no-op once that one is gone).

        The ack is queued: it rides in the connection's next frame, or its acker task
        writes every queued ack in one frame ``ACK_DELAY`` (2 ms) after the first
        (``Transport.run_acker``); a graceful close writes what is left.
        """
        live = self._current(generation)
        if live is not None:
            live.transport.ack_soon(delivery_id)

    async def nack(self, generation: int, delivery_id: str, reason: str, retryable: bool) -> None:
        """Nack a delivery of connection ``generation`` (a no-op once that one is gone)."""
        live = self._current(generation)
        if live is not None:
            reason = reason[:MAX_NACK_REASON]
            nack = pb.Nack(delivery_id=delivery_id, reason=reason, retryable=retryable)
            with trio.fail_after(self.rpc_timeout):
                await _write(live, pb.ClientEvent(nack=nack))

    async def unary(self, method: str, request: Any, response_type: Any) -> Any:
        """One unary RPC on the live connection, bounded by ``rpc_timeout``."""
        deadline = trio.current_time() + self.rpc_timeout
        live = await self.wait_live(deadline, f"call {method}")
        return await self._unary_on(live, method, request, response_type, deadline)

    async def _unary_on(
        self, live: Live, method: str, request: Any, response_type: Any, deadline: float
    ) -> Any:
        """One unary RPC on connection ``live``, bounded by ``deadline``."""
        waited = deadline - trio.current_time()
        with trio.CancelScope(deadline=deadline) as scope:
            live.calls.add(scope)
            try:
                return await call_unary(live.channel, method, request, response_type)
            finally:
                live.calls.discard(scope)
        if not live.alive:
            raise ConnectionClosedError(f"{self.label}: the connection dropped during {method}")
        raise RequestTimeoutError(f"{self.label}: {method} got no answer within {waited:.3g}s")


async def _write(live: Live, event: pb.ClientEvent) -> None:
    """Write a frame; a stream that cannot be written any more ends its connection."""
    try:
        await live.transport.send(event)
    finally:
        _end_if_broken(live)


def _end_if_broken(live: Live) -> None:
    if live.transport.broken is not None:
        live.scope.cancel()


def _remaining_ms(deadline: float) -> int:
    """A request's remaining time as its ``timeout_ms`` (an int32, at least 1)."""
    remaining_ms = int(max(0.0, deadline - trio.current_time()) * 1000)
    return max(1, min(remaining_ms, MAX_TIMEOUT_MS))


def _with_seq(frame: pb.StreamSend | pb.StreamReply, seq: int) -> pb.ClientEvent:
    frame.seq = seq
    if isinstance(frame, pb.StreamSend):
        return pb.ClientEvent(send=frame)
    return pb.ClientEvent(reply=frame)
