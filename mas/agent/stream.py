"""What each server frame means for the agent: ``ServerEvent`` -> actions (pure, sans-I/O).

``StreamState`` holds the bookkeeping of the Transport session that needs no Trio: the client
sequence numbers of outbound frames still waiting for their ``Result``, the correlation ids of
accepted requests still waiting for their reply, and a small stash of replies that arrived
before their request's ``Result`` (a fast target can answer before the server's ``Result``
frame reaches us). ``handle(event)`` returns the actions for the I/O layer to carry out:

=====================  ==============================================================
server frame           actions
=====================  ==============================================================
welcome                ``Welcomed``
error                  ``ServerRefused``
result                 ``FrameResult`` (+ ``ReplyArrived`` if its reply was stashed)
delivery(ies)          ``Incoming`` per message; per reply ``ReplyArrived`` (or stash,
                       or ``Discarded`` if nobody waits) and one ``SendAcks`` for them;
                       ``SendNack`` + ``Discarded`` for an undecodable envelope
=====================  ==============================================================

Replies are acked as soon as they are handed over (or stashed): they only mean something to
this process. The stash is bounded (oldest evicted) and emptied whenever no request frame is
waiting for its ``Result``, since no later ``Result`` could claim what it holds.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Final, Literal, TypeAlias

import msgspec

from .._proto import runtime_pb2 as pb
from ..envelope import Envelope, PayloadError, decode_envelope
from ..errors import RejectedError, rejected_error

REPLY_STASH_LIMIT: Final = 256  # early replies held at most; a burst larger than this is odd

FrameKind: TypeAlias = Literal["send", "request", "reply"]


class Welcomed(msgspec.Struct, frozen=True):
    agent_id: str
    instance_id: str
    batching: bool
    prefetch: int


class ServerRefused(msgspec.Struct, frozen=True):
    """A ``ServerError`` frame: the server refuses the session (``code``, ``reason``)."""

    code: str
    reason: str


class FrameResult(msgspec.Struct, frozen=True):
    """The server's answer to our frame ``seq``; ``error`` is None when accepted."""

    seq: int
    kind: FrameKind
    message_id: str
    correlation_id: str
    error: RejectedError | None = None


class Incoming(msgspec.Struct, frozen=True):
    """A message for this agent's handlers; must be acked or nacked exactly once."""

    delivery_id: str
    envelope: Envelope


class ReplyArrived(msgspec.Struct, frozen=True):
    """The reply to our request ``correlation_id`` (already acked)."""

    correlation_id: str
    envelope: Envelope


class SendAcks(msgspec.Struct, frozen=True):
    delivery_ids: tuple[str, ...]


class SendNack(msgspec.Struct, frozen=True):
    delivery_id: str
    reason: str
    retryable: bool


class Discarded(msgspec.Struct, frozen=True):
    """Something was dropped (for the log): a stale reply, a bad envelope, a late result."""

    reason: str
    delivery_id: str | None = None
    correlation_id: str | None = None
    notable: bool = False  # worth a warning (data was lost), not just a debug line


Action: TypeAlias = (
    Welcomed
    | ServerRefused
    | FrameResult
    | Incoming
    | ReplyArrived
    | SendAcks
    | SendNack
    | Discarded
)


class StreamState:
    """Sequence numbers, reply correlation and the early-reply stash of one agent instance.

    Frames belong to one connection (``connection_lost`` forgets them); correlation ids of
    accepted requests outlive connections, since the server keeps replies for the instance.
    """

    def __init__(self, *, stash_limit: int = REPLY_STASH_LIMIT) -> None:
        self._stash_limit = stash_limit
        self._seq = 0
        self._frames: dict[int, FrameKind] = {}
        self._requests_in_flight = 0
        self._awaiting: set[str] = set()
        self._stash: OrderedDict[str, Envelope] = OrderedDict()

    # -- the I/O layer tells us -----------------------------------------------------------

    def open_frame(self, kind: FrameKind) -> int:
        """Allocate the sequence number of a frame about to be written."""
        self._seq += 1
        self._frames[self._seq] = kind
        if kind == "request":
            self._requests_in_flight += 1
        return self._seq

    def abandon_frame(self, seq: int) -> None:
        """The caller stopped waiting for frame ``seq``; its late ``Result`` is discarded."""
        if self._frames.pop(seq, None) == "request":
            self._requests_in_flight -= 1
            self._trim_stash()

    def begin_unary_request(self) -> None:
        """A request goes out as a unary ``Request`` RPC (to a server without the fast path).

        Its reply may come on the stream before the RPC's answer does, so early replies are
        stashed until ``end_unary_request``, as for a request frame.
        """
        self._requests_in_flight += 1

    def end_unary_request(self, correlation_id: str | None) -> Envelope | None:
        """The unary request was accepted as ``correlation_id`` (None: it failed).

        Returns its reply if that came first; otherwise the reply is awaited from now on.
        """
        self._requests_in_flight = max(0, self._requests_in_flight - 1)
        early: Envelope | None = None
        if correlation_id:
            early = self._stash.pop(correlation_id, None)
            if early is None:
                self._awaiting.add(correlation_id)
        self._trim_stash()
        return early

    def stop_awaiting(self, correlation_id: str) -> None:
        """The requester gave up on a reply (timeout); a late reply is acked and dropped."""
        self._awaiting.discard(correlation_id)

    def connection_lost(self) -> list[int]:
        """Forget the connection's frames; returns the sequence numbers left without a Result.

        The next connection numbers its frames from 1 again.
        """
        lost = sorted(self._frames)
        self._frames.clear()
        self._requests_in_flight = 0
        self._seq = 0
        self._trim_stash()
        return lost

    @property
    def frames_in_flight(self) -> int:
        return len(self._frames)

    @property
    def awaiting(self) -> frozenset[str]:
        return frozenset(self._awaiting)

    @property
    def stashed(self) -> frozenset[str]:
        return frozenset(self._stash)

    # -- the server tells us ---------------------------------------------------------------

    def handle(self, event: pb.ServerEvent) -> list[Action]:
        """The actions one server frame calls for, in order."""
        kind = event.WhichOneof("event")
        if kind == "welcome":
            w = event.welcome
            return [Welcomed(w.agent_id, w.instance_id, w.batching, w.prefetch)]
        if kind == "error":
            return [ServerRefused(event.error.code, event.error.message)]
        if kind == "result":
            return self._on_result(event.result)
        if kind == "delivery":
            return self._on_deliveries([event.delivery])
        if kind == "deliveries":
            return self._on_deliveries(event.deliveries.deliveries)
        return [Discarded(f"unknown server frame {kind!r}")]

    def _on_result(self, result: pb.Result) -> list[Action]:
        kind = self._frames.pop(result.seq, None)
        if kind is None:
            return [Discarded(f"result for frame {result.seq}, which nobody waits for")]
        error: RejectedError | None = None
        if result.HasField("error"):
            retry_after = result.retry_after_seconds or None
            reason = result.error.message or result.error.code.lower()
            error = rejected_error(result.error.code, reason, retry_after=retry_after)
        elif kind == "request" and not result.correlation_id:
            error = rejected_error("INTERNAL", "missing_correlation_id")
        actions: list[Action] = [
            FrameResult(result.seq, kind, result.message_id, result.correlation_id, error)
        ]
        if kind == "request":
            self._requests_in_flight -= 1
            if error is None:
                cid = result.correlation_id
                early = self._stash.pop(cid, None)
                if early is not None:
                    actions.append(ReplyArrived(cid, early))
                else:
                    self._awaiting.add(cid)
            self._trim_stash()
        return actions

    def _on_deliveries(self, deliveries: Iterable[pb.Delivery]) -> list[Action]:
        replies: list[Action] = []
        incoming: list[Action] = []
        acks: list[str] = []
        for delivery in deliveries:
            try:
                envelope = decode_envelope(delivery.envelope_json)
            except PayloadError as exc:
                incoming.append(SendNack(delivery.delivery_id, "invalid_envelope", False))
                incoming.append(Discarded(str(exc), delivery_id=delivery.delivery_id, notable=True))
                continue
            if not envelope.meta.is_reply:
                incoming.append(Incoming(delivery.delivery_id, envelope))
                continue
            acks.append(delivery.delivery_id)
            replies.extend(self._on_reply(delivery.delivery_id, envelope))
        if acks:
            replies.append(SendAcks(tuple(acks)))
        return replies + incoming

    def _on_reply(self, delivery_id: str, envelope: Envelope) -> list[Action]:
        cid = envelope.meta.correlation_id
        if cid is not None and cid in self._awaiting:
            self._awaiting.discard(cid)  # a correlation id is single-use
            return [ReplyArrived(cid, envelope)]
        if cid is not None and self._requests_in_flight > 0 and cid not in self._stash:
            self._stash[cid] = envelope
            if len(self._stash) > self._stash_limit:
                old, _ = self._stash.popitem(last=False)
                return [Discarded("early-reply stash full", correlation_id=old, notable=True)]
            return []
        return [
            Discarded(
                "reply for no waiting request (it timed out, or is a duplicate)",
                delivery_id=delivery_id,
                correlation_id=cid,
            )
        ]

    def _trim_stash(self) -> None:
        if self._requests_in_flight <= 0:
            self._requests_in_flight = 0
            self._stash.clear()
