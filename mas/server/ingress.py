"""What the router works with on the way in: a client's message, its checks, its outcome.

``Outbound`` is one message a client asked to route; ``Ingress`` is its arrival (sender,
target, times) and makes its audit drafts; ``Prepared`` is an admitted message ready for the
store; ``Accepted`` and ``Rejection`` are the two outcomes (``Refused`` carries a rejection
with its audit draft inside the router).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, NamedTuple

import msgspec
import trio

from ..audit.record import AuditDraft, Decision
from ..envelope import ErrorInfo
from ..errors import REMOTE_HANDLER_ERROR, REMOTE_VALIDATION_ERROR
from ..store import Correlation, EnqueueItem
from ..store.base import (
    CORRELATION_EXPIRED,
    NOT_THE_TARGET,
    STORE_NOT_DURABLE,
    STORE_UNAVAILABLE,
    UNKNOWN_CORRELATION,
    CorrelationRefused,
)
from .gateway import Kind

ERROR_REPLY_TYPE: Final = "mas.error"  # a reply of this type is an error reply
DEFAULT_REQUEST_TIMEOUT: Final = 60.0  # seconds, when a request names none
MAX_MESSAGE_TYPE_LENGTH: Final = 256  # characters
_ERROR_KINDS: Final = frozenset({REMOTE_HANDLER_ERROR, REMOTE_VALIDATION_ERROR})


class Rejection(Exception):
    """A message the server will not route: gRPC status name and reason token."""

    def __init__(self, code: str, reason: str, *, retry_after: float | None = None) -> None:
        self.code = code
        self.reason = reason
        self.retry_after = retry_after
        super().__init__(f"{code} {reason}")


class Accepted(NamedTuple):
    """A routed message: its id, and the correlation id for a request."""

    message_id: str
    correlation_id: str = ""


class Outbound(NamedTuple):
    """One message a client asked the server to route."""

    kind: Kind
    target_id: str  # the target agent (send, request); "" for a reply
    message_type: str
    data_json: str
    timeout_ms: int = 0  # a request's reply deadline; 0: the default
    correlation_id: str = ""  # the request a reply answers
    acks: str = ""  # a reply's: the delivery of its request, acked with it (``reply_acks``)


class Refused(Exception):
    """A message refused before it reached the store: the rejection and its audit draft."""

    def __init__(self, rejection: Rejection, draft: AuditDraft) -> None:
        self.rejection = rejection
        self.draft = draft
        super().__init__(str(rejection))


def _as_is(text: str) -> str:
    return text


class Ingress(NamedTuple):
    """One message as it arrived, for routing and for its audit record."""

    kind: Kind
    sender_id: str
    sender_instance_id: str
    target_id: str
    message_type: str
    started: float  # Trio time of arrival, for the decision latency
    now: float  # wall-clock time of arrival
    # How a client-chosen field appears in the record: the gateway's DLP masks what its
    # rules match there (Gateway.shown), so no record holds a secret a client put in one.
    shown: Callable[[str], str] = _as_is

    def draft(self, decision: Decision, **fields: Any) -> AuditDraft:
        latency_ms = (trio.current_time() - self.started) * 1000.0
        shown = self.shown
        if fields.get("correlation_id") and "message_id" not in fields:
            # A refused message's correlation id is whatever the client sent; a routed one's
            # was made by this server.
            fields["correlation_id"] = shown(fields["correlation_id"])
        return AuditDraft(
            time=self.now,
            decision=decision,
            sender_id=self.sender_id,
            sender_instance_id=self.sender_instance_id,
            target_id=shown(self.target_id),
            message_type=shown(self.message_type),
            latency_ms=latency_ms,
            **fields,
        )


class Prepared(NamedTuple):
    """An admitted message, ready for the store."""

    position: int  # its place in the batch
    ingress: Ingress
    item: EnqueueItem
    taken: Correlation | None  # a reply's correlation, given back if it is not routed
    error: ErrorInfo | None  # set for an error reply


# A correlation refusal's gRPC status, as the seed system answers it.
_CORRELATION_CODES: Final = {
    UNKNOWN_CORRELATION: "INVALID_ARGUMENT",
    CORRELATION_EXPIRED: "FAILED_PRECONDITION",
    NOT_THE_TARGET: "PERMISSION_DENIED",
    STORE_UNAVAILABLE: "UNAVAILABLE",  # not the correlation's fault: the store's
    STORE_NOT_DURABLE: "UNAVAILABLE",  # stored, not acknowledged as durable: may be delivered
}


def correlation_refusal(
    ingress: Ingress, correlation_id: str, reason: str
) -> tuple[Rejection, AuditDraft]:
    """The rejection of a message the store refused, and its audit draft.

    A reply whose correlation is gone, or any message when the store is down or full
    (``store_unavailable``, answered ``UNAVAILABLE``: nothing was stored, try again).

    A late reply (``correlation_id_expired``) is routine, not an attack: it is audited
    as ``EXPIRED``, where a reply from the wrong agent is ``AUTHZ_DENIED``.
    """
    rejection = Rejection(_CORRELATION_CODES.get(reason, "INVALID_ARGUMENT"), reason)
    decision: Decision = "INVALID"
    if reason == NOT_THE_TARGET:
        decision = "AUTHZ_DENIED"
    elif reason == CORRELATION_EXPIRED:
        decision = "EXPIRED"
    return rejection, ingress.draft(decision, reason=reason, correlation_id=correlation_id)


def taken_correlation(
    ingress: Ingress, correlation_id: str, answered: Correlation | CorrelationRefused | None
) -> Correlation:
    """A reply's correlation, or ``Refused`` saying why the store would not give it."""
    if isinstance(answered, Correlation):
        return answered
    reason = answered.reason if answered is not None else UNKNOWN_CORRELATION
    raise Refused(*correlation_refusal(ingress, correlation_id, reason))


def error_info(message_type: str, data: dict[str, Any]) -> ErrorInfo | None:
    """An error reply's ErrorInfo, if ``message_type`` marks one."""
    if message_type != ERROR_REPLY_TYPE:
        return None
    try:
        info = msgspec.convert(data, ErrorInfo)
    except msgspec.ValidationError as exc:
        raise Rejection("INVALID_ARGUMENT", "invalid_error_reply") from exc
    if info.kind not in _ERROR_KINDS:
        raise Rejection("INVALID_ARGUMENT", "invalid_error_reply")
    return info
