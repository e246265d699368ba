"""The ``mas`` exception tree.

Every failure a user can see is one of these; foreign exceptions (ssl, purerpc,
h2, sqlite3, redis, msgspec) are translated once, at the adapter that meets
them, and chained with ``raise ... from exc``::

    MasError
    ├── ConfigError               mas.yaml is invalid or names something missing
    │   └── AgentLoadError        an agent's class_path cannot be imported
    ├── CertificateError          a TLS file is missing, unreadable or unfit
    ├── IdentityError             a peer certificate carries no acceptable SPIFFE id
    ├── ConnectionClosedError     the agent is not (or no longer) connected
    ├── RequestTimeoutError       no reply arrived before the request's timeout
    ├── StateError                stored state does not fit the agent's model
    ├── ReplyValidationError      a reply does not fit the model the requester asked for
    ├── StoreError                the store failed (I/O, unreachable Redis) or is closed
    ├── ControlError              no server answers on the control socket, or it refused
    ├── RejectedError             the server refused a message (gRPC status + reason)
    │   ├── UnauthenticatedError  UNAUTHENTICATED: identity refused
    │   ├── PermissionDeniedError PERMISSION_DENIED: not_authorized, dlp_blocked
    │   ├── RateLimitedError      RESOURCE_EXHAUSTED rate_limited (has retry_after)
    │   ├── ResourceExhaustedError RESOURCE_EXHAUSTED: message_too_large, queue_full, ...
    │   ├── CircuitOpenError      FAILED_PRECONDITION circuit_open
    │   ├── InvalidMessageError   INVALID_ARGUMENT: malformed frame or payload, or
    │   │                         unknown_correlation_id (a second reply, a made-up id)
    │   ├── UnavailableError      UNAVAILABLE store_unavailable: the store is down or
    │   │                         full; nothing was accepted, send again later
    │   ├── ReplyTooLateError     FAILED_PRECONDITION correlation_id_expired: the
    │   │                         request's deadline passed; nobody waits any more
    │   ├── NotFoundError         NOT_FOUND: unknown target
    │   └── StateConflictError    ABORTED state_conflict: a conditional state update lost
    └── RemoteError               the target's handler answered with an error reply
        ├── RemoteHandlerError    the handler raised
        └── RemoteValidationError the payload did not fit the handler's model

``RejectedError`` carries the wire ``code`` and ``reason``; ``rejected_error``
turns a (code, reason) pair from the server back into the right subclass.
``Reason`` is the one enumeration of the reason tokens a ``mas`` server sends
(a ``StrEnum``: each member *is* its wire string, spelt as the seed's system
spells it where it has the same refusal); the server's side of a refusal,
with its one reason-to-status table, is ``mas.server.refusal``.
``leaves`` is the one exception-group unwrapper: the exceptions inside a nest
of (strict nursery) groups, in order.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final


class Reason(StrEnum):
    """Every reason token a ``mas`` server puts on the wire or in an audit record.

    The values are the compatibility contract (docs/compatibility.md): where the seed's
    system has the same refusal, its own spelling, character for character. A member
    compares equal to its string, so ``exc.reason == Reason.RATE_LIMITED`` holds for a
    ``RejectedError`` built from the wire.
    """

    # Identity (UNAUTHENTICATED); the first three are the seed's (mas.identity makes them).
    MISSING_SPIFFE_SAN = "missing_spiffe_san"
    INVALID_SPIFFE_SAN = "invalid_spiffe_san"
    INVALID_SPIFFE_FORMAT = "invalid_spiffe_format"
    CA_CERTIFICATE = "ca_certificate"
    UNPARSABLE_CERTIFICATE = "unparsable_certificate"
    NO_CLIENT_CERTIFICATE = "no_client_certificate"
    NOT_ALLOWLISTED = "not_allowlisted"
    CERTIFICATE_REVOKED = "certificate_revoked"
    # Connections and the Transport stream.
    TOO_MANY_CONNECTIONS = "too_many_connections"
    HELLO_REQUIRED = "hello_required"
    INVALID_INSTANCE_ID = "invalid_instance_id"
    DUPLICATE_HELLO = "duplicate_hello"
    HELLO_TIMEOUT = "hello_timeout"
    TOO_MANY_SESSIONS = "too_many_sessions"
    REPLACED_BY_NEW_SESSION = "replaced_by_new_session"
    MALFORMED_FRAME = "malformed_frame"
    UNSUPPORTED_ENCODING = "unsupported_encoding"
    SLOW_CONSUMER = "slow_consumer"
    UNFINISHED_MESSAGE = "unfinished_message"
    SERVER_SHUTTING_DOWN = "server_shutting_down"
    # Unary RPCs in general.
    UNKNOWN_METHOD = "unknown method"  # followed on the wire by " /<service>/<method>"
    REQUEST_TIMEOUT = "request_timeout"
    MISSING_REQUEST = "missing_request"
    MORE_THAN_ONE_REQUEST = "more_than_one_request"
    SESSION_REQUIRED = "session_required"
    INSTANCE_NOT_BOUND = "instance_not_bound"
    STORE_UNAVAILABLE = "store_unavailable"  # the store could not be reached or written
    # Redis took it, but its replicas / fsync did not acknowledge it in time: it may
    # still be delivered (a retry may duplicate it).
    STORE_NOT_DURABLE = "store_not_durable"
    INTERNAL_ERROR = "internal_error"
    EXPECTED_HEADERS = "expected_headers"
    # Send, Request and Reply (the policy pipeline's are the seed's).
    NOT_AUTHORIZED = "not_authorized"
    UNKNOWN_TARGET = "unknown_target"
    RATE_LIMITED = "rate_limited"
    CIRCUIT_OPEN = "circuit_open"
    DLP_BLOCKED = "dlp_blocked"
    UNKNOWN_CORRELATION = "unknown_correlation_id"  # never issued, used, or long gone
    CORRELATION_EXPIRED = "correlation_id_expired"  # its request's deadline has passed
    INVALID_MESSAGE_TYPE = "invalid_message_type"
    MESSAGE_TOO_LARGE = "message_too_large"
    INVALID_PAYLOAD = "invalid_payload"
    INVALID_TIMEOUT = "invalid_timeout"
    QUEUE_FULL = "queue_full"
    INVALID_ERROR_REPLY = "invalid_error_reply"
    # State.
    INVALID_STATE_KEY = "invalid_state_key"
    INVALID_STATE_VALUE = "invalid_state_value"
    STATE_TOO_LARGE = "state_too_large"
    STATE_CONFLICT = "state_conflict"
    # A connection's GOAWAY debug data (no RPC status: the connection ends).
    TOO_MANY_STREAMS = "too_many_streams"
    TOO_MANY_PINGS = "too_many_pings"
    TOO_MANY_SETTINGS = "too_many_settings"
    TOO_MUCH_BUFFERED = "unfinished_messages_too_large"
    HEADERS_TOO_LARGE = "headers_too_large"
    TOO_MANY_HEADERS = "too_many_headers"
    IDLE_TIMEOUT = "idle_timeout"
    SLOW_READER = "slow_reader"
    # Delivery events in the audit trail (no refusal).
    ACK_TIMEOUT = "ack_timeout"  # a delivery not acked in time: redelivered
    NACKED = "nacked"  # a nack without a reason of its own
    DEADLINE_EXCEEDED = "deadline_exceeded"  # claimed after its requester gave up


def leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside ``exc`` and its nested exception groups, in order.

    An exception that is not a group is its own only leaf.
    """
    found: list[BaseException] = []
    stack: list[BaseException] = [exc]
    while stack:
        current = stack.pop()
        if isinstance(current, BaseExceptionGroup):
            stack.extend(reversed(current.exceptions))
        else:
            found.append(current)
    return found


class MasError(Exception):
    """Base class of every error raised by ``mas``."""


class ConfigError(MasError):
    """The configuration is invalid; the message names the path and the fix."""


class AgentLoadError(ConfigError):
    """An agent's ``class_path`` cannot be imported or is not an Agent subclass."""


class CertificateError(MasError):
    """A certificate or key is missing, unreadable, or unfit for its use."""


class IdentityError(MasError):
    """A peer certificate does not carry exactly one acceptable SPIFFE agent id.

    ``reason`` is a stable token for audit records and status messages, spelt as
    the seed's system spells it (``missing_spiffe_san``, ``invalid_spiffe_san``,
    ``invalid_spiffe_format``), plus ``ca_certificate`` and
    ``unparsable_certificate``; ``detail`` says exactly what is wrong.
    """

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


class ConnectionClosedError(MasError):
    """The agent has no live connection to the server."""


class RequestTimeoutError(MasError, TimeoutError):
    """A request got no reply within its timeout."""


class StateError(MasError):
    """Stored agent state does not fit the agent's state model, or is too large."""


class ReplyValidationError(MasError, ValueError):
    """A reply did not fit the ``model`` given to ``Agent.request``.

    The message names the reply, the model and the field at fault (msgspec's
    path, ``$.count``); ``reply`` is the reply as it arrived.
    """

    def __init__(self, message: str, reply: object) -> None:
        self.reply = reply
        super().__init__(message)


class StoreError(MasError):
    """The store failed or is unreachable; the server answers ``UNAVAILABLE``."""


class ControlError(MasError):
    """A command could not use the running server's control socket (``mas.control``).

    No server is running for the config, the socket belongs to another user, the
    server refused the request, or it did not answer in time; the message says
    which, and what to do.
    """


class RejectedError(MasError):
    """The server refused a message; ``code`` is the gRPC status name."""

    def __init__(self, code: str, reason: str, *, retry_after: float | None = None) -> None:
        self.code = code
        self.reason = reason
        self.retry_after = retry_after
        super().__init__(f"{code} {reason}")


class UnauthenticatedError(RejectedError):
    """The server did not accept this agent's identity."""


class PermissionDeniedError(RejectedError):
    """Policy forbids this message (``not_authorized``, ``dlp_blocked``)."""


class RateLimitedError(RejectedError):
    """The sender is over its rate limit; retry after ``retry_after`` seconds.

    The limit is ``gateway.rate_limit`` in mas.yaml (100 per minute and 1,000 per
    hour per sender by default), or the agent's own ``rate_limit``.
    """

    def __str__(self) -> str:
        after = f", retry after {self.retry_after:.2f}s" if self.retry_after is not None else ""
        return (
            f"{self.code} {self.reason}{after}: the sender is over its rate limit; raise "
            "gateway.rate_limit.per_minute / per_hour in mas.yaml (defaults 100 and 1000) "
            "or the agent's own rate_limit"
        )


class ResourceExhaustedError(RejectedError):
    """A server limit was hit (message too large, target queue full, ...)."""


class CircuitOpenError(RejectedError):
    """The target's circuit breaker is open; the message was not routed."""


class InvalidMessageError(RejectedError):
    """The message or frame was malformed."""


class NotFoundError(RejectedError):
    """The target agent is unknown."""


class UnavailableError(RejectedError):
    """UNAVAILABLE store_unavailable: the server could not store the message now.

    Its store is down or its disk full; nothing was accepted. Send it again later
    (the server stays up and takes messages again once its store is back).
    ``reason == "store_not_durable"``: Redis took the message but its replicas (or
    its fsync) did not acknowledge it in time (``store.accept_replicas``,
    ``accept_fsync``); it may still be delivered, so sending again may duplicate it.
    """


class ReplyTooLateError(RejectedError):
    """A reply came after its request's deadline: the requester no longer waits.

    Routine for a handler that outlives its request; ``AgentMessage.reply`` logs it
    on one line and returns instead of raising.
    """


class StateConflictError(RejectedError):
    """A conditional state update was refused: the state's version moved since it was read.

    The server answers ``ABORTED state_conflict`` (gRPC's status for a failed
    test-and-set: read again and redo the change) and wrote nothing.
    ``Agent.edit_state`` retries on it; it reaches the caller only when every
    attempt lost the race.
    """

    def __init__(
        self,
        code: str = "ABORTED",
        reason: str = "state_conflict",
        *,
        retry_after: float | None = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(code, reason, retry_after=retry_after)
        self.attempts = attempts
        if attempts > 1:
            self.args = (
                f"{code} {reason}: another writer changed the state during each of "
                f"{attempts} attempts; try again later, or pass edit_state a larger attempts",
            )


class RemoteError(MasError):
    """The target's handler answered a request with an error reply."""

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind
        self.message = message
        super().__init__(f"{kind}: {message}")


class RemoteHandlerError(RemoteError):
    """The target's handler raised while handling the request."""


class RemoteValidationError(RemoteError):
    """The request payload did not fit the target handler's model."""


_BY_CODE: Final[dict[str, type[RejectedError]]] = {
    "UNAUTHENTICATED": UnauthenticatedError,
    "PERMISSION_DENIED": PermissionDeniedError,
    "RESOURCE_EXHAUSTED": ResourceExhaustedError,
    "FAILED_PRECONDITION": RejectedError,
    "INVALID_ARGUMENT": InvalidMessageError,
    "NOT_FOUND": NotFoundError,
    "UNAVAILABLE": UnavailableError,
}

_BY_REASON: Final[dict[str, type[RejectedError]]] = {
    Reason.RATE_LIMITED: RateLimitedError,
    Reason.CIRCUIT_OPEN: CircuitOpenError,
    Reason.CORRELATION_EXPIRED: ReplyTooLateError,
    Reason.STATE_CONFLICT: StateConflictError,
}


def rejected_error(code: str, reason: str, *, retry_after: float | None = None) -> RejectedError:
    """Build the ``RejectedError`` subclass that matches a server's (code, reason)."""
    cls = _BY_REASON.get(reason) or _BY_CODE.get(code, RejectedError)
    return cls(code, reason, retry_after=retry_after)


REMOTE_HANDLER_ERROR: Final = "handler_error"  # error-reply kind: the handler raised
REMOTE_VALIDATION_ERROR: Final = "validation_error"  # error-reply kind: payload misfit


def remote_error(kind: str, message: str) -> RemoteError:
    """Build the ``RemoteError`` subclass for an error reply's ``kind``."""
    if kind == REMOTE_VALIDATION_ERROR:
        return RemoteValidationError(kind, message)
    return RemoteHandlerError(kind, message)
