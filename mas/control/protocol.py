"""The control socket's protocol: frames, requests, replies, and the status snapshot (pure).

A connection carries any number of exchanges, one at a time: the client sends one
request frame, the server answers with one reply frame. A frame is a 4-byte
big-endian length ``N`` followed by ``N`` bytes of MessagePack (msgspec)::

    +----------------+---------------------------------------------+
    | N (uint32, BE) | msgpack(Request) client->server, <= 64 KiB  |
    +----------------+---------------------------------------------+
    | N (uint32, BE) | msgpack(Reply)   server->client, <= 16 MiB  |
    +----------------+---------------------------------------------+

Requests are a tagged union on ``op``::

    {"op": "status"}                          -> StatusReply (the StatusSnapshot)
    {"op": "reload"}                          -> ReloadReply (re-read mas.yaml, as SIGHUP)
    {"op": "dlq_replay", "message_ids": null} -> ReplayReply (null: every dead letter)
    {"op": "dlq_list", "agent_id": null, "start": 0} -> ListReply (a page of dead letters)

and every reply may instead be an ``ErrorReply`` (``code``, ``message``): ``bad_request``
(the frame did not decode: the server closes the connection after saying so),
``busy`` (too many control clients), ``not_allowed`` (the peer is another user),
``failed`` (the action failed; ``message`` says why). Unknown fields are errors, so a
newer client talking to an older server is told, never silently half-served.
``version`` is the protocol version (``PROTOCOL_VERSION``); a server refuses others.
"""

from __future__ import annotations

import struct
from typing import Annotated, Final, Literal

import msgspec

PROTOCOL_VERSION: Final = 1
HEADER: Final = struct.Struct(">I")  # the frame length prefix
MAX_REQUEST_BYTES: Final = 65_536  # a request frame's body, bytes
MAX_REPLY_BYTES: Final = 16 * 1024 * 1024  # a reply frame's body (a status of many agents)
MAX_SOCKET_PATH: Final = 107  # bytes of a Unix socket path (sun_path less its NUL, Linux)
MAX_REPLAY_IDS: Final = 1_000  # message ids one dlq_replay names (more: several requests)
MAX_LISTED: Final = 500  # dead letters one dlq_list reply carries (more: ask from `next_start`)
MAX_LISTED_BYTES: Final = 8 * 1024 * 1024  # envelope bytes one dlq_list reply carries

ErrorCode = Literal["bad_request", "busy", "not_allowed", "failed"]


class _Wire(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Base of every frame body: immutable, typo-proof."""


# -- requests ---------------------------------------------------------------------------


class StatusRequest(_Wire, frozen=True, tag_field="op", tag="status"):
    """Ask for the status snapshot (read-only)."""

    version: int = PROTOCOL_VERSION


class ReloadRequest(_Wire, frozen=True, tag_field="op", tag="reload"):
    """Re-read mas.yaml and apply it, as SIGHUP does, and say what happened."""

    version: int = PROTOCOL_VERSION


class DlqReplayRequest(_Wire, frozen=True, tag_field="op", tag="dlq_replay"):
    """Put dead letters back in their queues: these ids, or every one (``None``)."""

    version: int = PROTOCOL_VERSION
    message_ids: (
        Annotated[
            list[Annotated[str, msgspec.Meta(min_length=1, max_length=128)]],
            msgspec.Meta(max_length=MAX_REPLAY_IDS),
        ]
        | None
    ) = None
    operator: Annotated[str, msgspec.Meta(max_length=256)] = ""  # user@host, for the audit


class DlqListRequest(_Wire, frozen=True, tag_field="op", tag="dlq_list"):
    """A page of the dead letters (of ``agent_id``, or every agent's), from ``start`` on.

    The first page (``start`` 0) is audited as one ``DLQ_LISTED`` record naming the
    ``operator``; a listing that needs several pages reads a queue that may change between
    them (a replay, a new dead letter), as any paged listing does.
    """

    version: int = PROTOCOL_VERSION
    agent_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)] | None = None
    start: Annotated[int, msgspec.Meta(ge=0)] = 0
    operator: Annotated[str, msgspec.Meta(max_length=256)] = ""  # user@host, for the audit


Request = StatusRequest | ReloadRequest | DlqReplayRequest | DlqListRequest

# -- the status snapshot ------------------------------------------------------------------


class StoreHealth(_Wire, frozen=True):
    """The store as the server sees it now."""

    backend: str
    where: str  # the file, or the URL with its password redacted
    reachable: bool
    error: str = ""


class AgentRow(_Wire, frozen=True):
    """One agent: configured or connected, and what it did since the server started."""

    agent_id: str
    configured: bool
    instances: int  # instances mas.yaml configures (0: not configured)
    connected: int  # instances connected now
    queue_depth: int | None  # waiting in its queue; None: the store did not answer
    in_flight: int
    retrying: int  # in flight on a second or later attempt
    dead_letters: int | None  # in the dead-letter queue now; None: not known
    sent: int
    refused: int
    delivered: int
    nacked: int
    dead_lettered: int
    expired: int
    last_activity: float | None  # wall time; None: nothing yet


class BreakerRow(_Wire, frozen=True):
    """A circuit breaker that is not closed."""

    target_id: str
    state: str
    opened_at: float


class LatencyHistogram(_Wire, frozen=True):
    """Routing latency (arrival to decision) of routed messages, seconds, since start.

    ``counts[i]`` observations were <= ``bounds[i]`` and above the previous bound; the
    last count is above every bound.
    """

    bounds: list[float]
    counts: list[int]
    sum: float
    count: int


class RefusalCount(_Wire, frozen=True):
    """Messages refused for one decision and reason since start."""

    decision: str
    reason: str
    count: int


class StatusSnapshot(_Wire, frozen=True):
    """Everything ``mas status`` and ``mas top`` show, as one server saw it at ``time``."""

    server_id: str
    version: str
    pid: int
    config_path: str
    time: float  # wall time of the snapshot
    started_at: float
    listen: str
    store: StoreHealth
    sessions: int
    connections: int
    agents: list[AgentRow]
    decisions: dict[str, int]  # since start, every decision kind seen
    decisions_last_minute: dict[str, int]
    refusals: list[RefusalCount]
    latency: LatencyHistogram
    breakers: list[BreakerRow]
    metrics_address: str = ""  # host:port of /metrics, "" when off

    @property
    def uptime(self) -> float:
        return max(0.0, self.time - self.started_at)


# -- replies ------------------------------------------------------------------------------


class StatusReply(_Wire, frozen=True, tag_field="kind", tag="status"):
    status: StatusSnapshot


class ReloadReply(_Wire, frozen=True, tag_field="kind", tag="reload"):
    """The config at ``config_path`` is in force; ``needs_restart``: settings that wait."""

    config_path: str
    needs_restart: list[str] = []


class ReplayedMessage(_Wire, frozen=True):
    message_id: str
    target_id: str


class ReplayReply(_Wire, frozen=True, tag_field="kind", tag="replay"):
    replayed: list[ReplayedMessage]


class ListedLetter(_Wire, frozen=True):
    """One dead letter as ``mas dlq list`` shows it."""

    message_id: str
    target_id: str
    envelope_json: bytes  # the envelope as routed
    attempt: int  # the attempts it had
    reason: str  # why it was dead-lettered
    dead_lettered_at: float  # wall-clock seconds


class ListReply(_Wire, frozen=True, tag_field="kind", tag="list"):
    """A page of dead letters; ``next_start`` asks for the next one (None: this was the last)."""

    letters: list[ListedLetter]
    next_start: int | None = None


class ErrorReply(_Wire, frozen=True, tag_field="kind", tag="error"):
    code: ErrorCode
    message: str


Reply = StatusReply | ReloadReply | ReplayReply | ListReply | ErrorReply

_request_decoder: Final = msgspec.msgpack.Decoder(Request)
_reply_decoder: Final = msgspec.msgpack.Decoder(Reply)
_encoder: Final = msgspec.msgpack.Encoder()


class FrameError(ValueError):
    """A frame that breaks the protocol (too long, or a body that does not decode)."""


def encode_frame(body: Request | Reply) -> bytes:
    """The frame carrying ``body``: length prefix, then MessagePack."""
    data = _encoder.encode(body)
    return HEADER.pack(len(data)) + data


def frame_length(header: bytes, limit: int) -> int:
    """The body length a frame header announces; ``FrameError`` past ``limit``."""
    (length,) = HEADER.unpack(header)
    if length > limit:
        raise FrameError(f"a frame of {length} bytes is over the limit of {limit}")
    return int(length)


def decode_request(body: bytes) -> Request:
    """A request body; ``FrameError`` saying what is wrong with it."""
    try:
        return _request_decoder.decode(body)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
        raise FrameError(f"not a control request: {exc}") from exc


def decode_reply(body: bytes) -> Reply:
    """A reply body; ``FrameError`` saying what is wrong with it."""
    try:
        return _reply_decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise FrameError(f"not a control reply: {exc}") from exc
