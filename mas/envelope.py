"""The message envelope: the JSON carried in ``Delivery.envelope_json`` (pure).

Field names follow the mas-framework 0.4 protocol so that its clients can read
what this server delivers::

    {"message_id": "...", "sender_id": "ping", "target_id": "pong",
     "message_type": "patient_message", "data": {...}, "timestamp": 1.7e9,
     "meta": {"version": 1, "correlation_id": "...", "expects_reply": true,
              "is_reply": false, "sender_instance_id": "...",
              "reply_to_instance_id": null, "traceparent": null,
              "tracestate": null, "attempt": 1, "error": null,
              "deadline": 1.7e9}}

``attempt``, ``error`` and ``deadline`` are mas additions: the delivery attempt
number; on an error reply the kind and message of the handler's failure; on a
request and on its reply, the wall-clock time (seconds since the epoch) after
which the requester no longer waits, so the server delivers neither after it.

Identifiers are random (``secrets``), never clock readings: ``message_id`` is
128 bits, a correlation id 192 bits, a delivery id 96 bits.
"""

from __future__ import annotations

import secrets
from typing import Any, Final

import msgspec

from .errors import REMOTE_HANDLER_ERROR, REMOTE_VALIDATION_ERROR

PROTOCOL_VERSION: Final = 1
ERROR_REPLY_TYPE: Final = "mas.error"  # a reply of this type is an error reply


class ErrorInfo(msgspec.Struct, frozen=True, kw_only=True):
    """Why a request failed at the target (carried on an error reply)."""

    kind: str
    message: str


class Meta(msgspec.Struct, frozen=True, kw_only=True):
    """Transport metadata, kept apart from the business payload."""

    version: int = PROTOCOL_VERSION
    correlation_id: str | None = None
    expects_reply: bool = False
    is_reply: bool = False
    sender_instance_id: str | None = None
    reply_to_instance_id: str | None = None
    traceparent: str | None = None
    tracestate: str | None = None
    attempt: int = 1
    error: ErrorInfo | None = None
    deadline: float | None = None  # a request's (and its reply's) reply deadline, epoch s


class _RoutingMeta(msgspec.Struct, frozen=True):
    expects_reply: bool = False
    deadline: float | None = None


class Routing(msgspec.Struct, frozen=True):
    """What delivery needs to know of a stored envelope (``routing_of``)."""

    meta: _RoutingMeta = _RoutingMeta()

    @property
    def expects_reply(self) -> bool:
        return self.meta.expects_reply

    @property
    def deadline(self) -> float | None:
        return self.meta.deadline


class Envelope(msgspec.Struct, frozen=True, kw_only=True):
    """One message as routed by the server and delivered to an agent."""

    message_id: str
    sender_id: str
    target_id: str
    message_type: str
    data: dict[str, Any]
    meta: Meta = Meta()
    timestamp: float = 0.0


_encoder: Final = msgspec.json.Encoder()
_envelope_decoder: Final = msgspec.json.Decoder(Envelope)
_object_decoder: Final = msgspec.json.Decoder(dict[str, Any])
_routing_decoder: Final = msgspec.json.Decoder(Routing)
_ERROR_KINDS: Final = frozenset({REMOTE_HANDLER_ERROR, REMOTE_VALIDATION_ERROR})


class PayloadError(ValueError):
    """A payload is not a JSON object (the message says why)."""


def error_info(message_type: str, data: dict[str, Any]) -> ErrorInfo | None:
    """An error reply's ErrorInfo, if ``message_type`` marks one (``ERROR_REPLY_TYPE``).

    Raises ``PayloadError`` when the data is not ``{"kind", "message"}`` of a known kind.
    """
    if message_type != ERROR_REPLY_TYPE:
        return None
    try:
        info = msgspec.convert(data, ErrorInfo)
    except msgspec.ValidationError as exc:
        raise PayloadError(f"an error reply's data must be {{kind, message}}: {exc}") from exc
    if info.kind not in _ERROR_KINDS:
        raise PayloadError(f"unknown error reply kind {info.kind!r}")
    return info


def new_message_id() -> str:
    """A fresh, globally unique message id (128 random bits, hex)."""
    return secrets.token_hex(16)


def new_correlation_id() -> str:
    """A fresh, unguessable, single-use correlation id (192 random bits)."""
    return secrets.token_urlsafe(24)


def new_delivery_id() -> str:
    """A fresh delivery id, unique per delivery attempt (96 random bits)."""
    return secrets.token_urlsafe(12)


def encode_envelope(envelope: Envelope) -> bytes:
    """Encode an envelope to compact JSON bytes."""
    return _encoder.encode(envelope)


def decode_envelope(raw: bytes | str) -> Envelope:
    """Decode and validate envelope JSON; raise ``PayloadError`` if it is malformed."""
    try:
        return _envelope_decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise PayloadError(f"invalid envelope: {exc}") from exc
    except RecursionError as exc:
        raise PayloadError("invalid envelope: nested too deeply") from exc


def routing_of(raw: bytes) -> Routing:
    """Whether a stored envelope is a request, and its deadline.

    A real parse of the envelope's ``meta`` (the payload is skipped, not searched), so
    no payload can make a message look like a request. The server wrote ``raw``, so it
    is well formed; anything else reads as a plain message with no deadline.
    """
    try:
        return _routing_decoder.decode(raw)
    except (msgspec.DecodeError, RecursionError):
        return Routing()


def decode_data(data_json: str | bytes) -> dict[str, Any]:
    """Decode a message payload, which must be a JSON object.

    Raises ``PayloadError`` for anything else, a payload nested too deeply for the
    decoder included (never ``RecursionError``).

    An empty string is taken as ``{}`` (clients of the original protocol may send
    no payload at all).
    """
    if not data_json:
        return {}
    try:
        return _object_decoder.decode(data_json)
    except msgspec.DecodeError as exc:
        raise PayloadError(f"data_json must be a JSON object: {exc}") from exc
    except RecursionError as exc:  # msgspec's decoder is recursive (about 1,000 levels)
        raise PayloadError("data_json is nested too deeply") from exc


def encode_data(data: Any) -> bytes:
    """Encode a payload (a dict or a msgspec Struct) as JSON bytes."""
    return _encoder.encode(data)


def with_attempt(envelope: Envelope, attempt: int) -> Envelope:
    """The same envelope, stamped with a delivery attempt number."""
    return msgspec.structs.replace(
        envelope, meta=msgspec.structs.replace(envelope.meta, attempt=attempt)
    )
