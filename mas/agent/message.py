"""The values an agent sees: incoming messages, discovery records, TLS file paths."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import msgspec

from .._proto import runtime_pb2 as pb
from ..envelope import Envelope, Meta
from ..errors import ReplyTooLateError

log = logging.getLogger("mas.agent")

_encoder: Final = msgspec.json.Encoder()
_metadata_decoder: Final = msgspec.json.Decoder(dict[str, Any])


def encode_object(data: object) -> str:
    """Encode message data, which must be a dict or a msgspec Struct, as JSON object text."""
    if not isinstance(data, Mapping | msgspec.Struct):
        raise TypeError(f"message data must be a dict or a msgspec.Struct, got {type(data)!r}")
    try:
        text = _encoder.encode(data).decode()
    except (TypeError, msgspec.EncodeError) as exc:
        raise TypeError(f"message data has no JSON form: {exc}") from exc
    if not text.startswith("{"):
        raise TypeError("message data must encode as a JSON object (an array_like Struct does not)")
    return text


Replier = Callable[[str, str, Any], Awaitable[str]]
"""``(correlation_id, message_type, data) -> message_id``: sends a reply for a message."""


class TLSFiles(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The PEM files of an agent's mTLS identity (the runner passes these as ``tls=``)."""

    ca_path: str
    cert_path: str
    key_path: str


class DiscoveredAgent(msgspec.Struct, frozen=True):
    """One agent found by ``Agent.discover``."""

    agent_id: str
    capabilities: tuple[str, ...]
    metadata: dict[str, Any]
    status: str  # "ACTIVE" (at least one instance connected) or "INACTIVE", as on the wire
    instance_count: int

    @classmethod
    def from_record(cls, record: pb.AgentRecord) -> DiscoveredAgent:
        """From the wire record; metadata that is not a JSON object reads as ``{}``."""
        try:
            metadata = _metadata_decoder.decode(record.metadata_json or "{}")
        except msgspec.DecodeError:
            metadata = {}
        return cls(
            agent_id=record.agent_id,
            capabilities=tuple(record.capabilities),
            metadata=metadata,
            status=record.status,
            instance_count=record.instance_count,
        )


class AgentMessage:
    """A message delivered to this agent (read-only), which a handler may ``reply`` to.

    ``sender_id`` was set by the server from the sender's certificate and cannot be spoofed.
    """

    __slots__ = ("_envelope", "_replied", "_replier", "_replying")

    def __init__(self, envelope: Envelope, replier: Replier | None = None) -> None:
        self._envelope = envelope
        self._replier = replier
        self._replying = False
        self._replied = False

    @property
    def envelope(self) -> Envelope:
        return self._envelope

    @property
    def message_id(self) -> str:
        return self._envelope.message_id

    @property
    def sender_id(self) -> str:
        return self._envelope.sender_id

    @property
    def target_id(self) -> str:
        return self._envelope.target_id

    @property
    def message_type(self) -> str:
        return self._envelope.message_type

    @property
    def data(self) -> dict[str, Any]:
        return self._envelope.data

    @property
    def meta(self) -> Meta:
        return self._envelope.meta

    @property
    def timestamp(self) -> float:
        return self._envelope.timestamp

    @property
    def correlation_id(self) -> str | None:
        return self._envelope.meta.correlation_id

    @property
    def expects_reply(self) -> bool:
        """True for a request: the sender waits for exactly one reply."""
        return self._envelope.meta.expects_reply

    @property
    def deadline(self) -> float | None:
        """A request's reply deadline (wall-clock seconds since the epoch), else None.

        The requester stops waiting then, and the server refuses a later reply.
        """
        return self._envelope.meta.deadline

    def time_remaining(self) -> float | None:
        """Seconds left before this request's deadline (negative once past); None if none.

        Read from this host's wall clock, so clock skew between hosts shifts it.
        """
        deadline = self._envelope.meta.deadline
        return None if deadline is None else deadline - time.time()

    @property
    def replied(self) -> bool:
        """True once a reply to this message was accepted by the server."""
        return self._replied

    async def reply(self, message_type: str, data: dict[str, Any] | msgspec.Struct) -> str:
        """Answer this request; returns the reply's message id.

        Raises ``RuntimeError`` if the message is not a request or was already answered, and
        the ``mas`` errors of a send (``RejectedError``, ``ConnectionClosedError``, ...) if the
        server does not take the reply; after such a failure the reply may be tried again.
        A reply after the request's deadline is not an error of the handler: nobody waits
        for it, so it is logged on one line and ``""`` is returned (see ``deadline``).
        """
        correlation_id = self._envelope.meta.correlation_id
        if not self.expects_reply or not correlation_id or self._replier is None:
            raise RuntimeError(
                f"message {self.message_id} ({self.message_type!r} from {self.sender_id!r}) "
                "is not a request: there is nobody waiting for a reply"
            )
        if self._replied or self._replying:
            raise RuntimeError(
                f"request {self.message_id} ({self.message_type!r} from {self.sender_id!r}) "
                "was already replied to; a request gets exactly one reply"
            )
        self._replying = True
        try:
            message_id = await self._replier(correlation_id, message_type, data)
        except ReplyTooLateError:
            self._replied = True  # the request is over: there is nothing left to answer
            log.info(
                "reply %r to %r's request %s dropped: it came after the request's deadline",
                message_type,
                self.sender_id,
                self.message_id,
            )
            return ""
        finally:
            self._replying = False
        self._replied = True
        return message_id

    def __repr__(self) -> str:
        return (
            f"AgentMessage(message_id={self.message_id!r}, sender_id={self.sender_id!r}, "
            f"message_type={self.message_type!r})"
        )
