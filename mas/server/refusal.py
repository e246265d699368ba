"""The server's refusal: one value from the policy core to the wire, and its one status table.

A refusal is a ``Reason`` (``mas.errors.Reason``, the seed system's spellings); its gRPC
status comes from ``STATUS``, the one table of reason to status, so a reason cannot go out
with two codes. ``Refusal`` is raised (or returned, for one message of a stream's batch) by
the transport, the router and the servicer alike; the dispatcher (``mas.server.grpc``)
ends the RPC with ``code`` and ``message``, and the stream fast path puts the same code,
reason and ``retry_after`` in a ``Result`` frame. What the audit trail needs travels
along as attributes: the router's ``draft`` (the record of the refused message).

A refusal is not the SDK's ``mas.errors.RejectedError``, its twin on the client side
(``rejected_error(code, reason)`` builds that from the wire): a ``RejectedError`` carries
whatever code a server sent, and an in-process agent may raise one through server code,
where it must never be mistaken for the server's own decision.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from ..audit.record import AuditDraft
from ..errors import Reason

R = Reason

# The one table: the gRPC status (a StatusCode name) each refusal reason ends an RPC with.
# docs/compatibility.md lists them; tests/e2e/test_interop.py checks them with grpcio.
STATUS: Final[Mapping[Reason, str]] = MappingProxyType(
    {
        **dict.fromkeys(
            (
                R.MISSING_SPIFFE_SAN,
                R.INVALID_SPIFFE_SAN,
                R.INVALID_SPIFFE_FORMAT,
                R.CA_CERTIFICATE,
                R.UNPARSABLE_CERTIFICATE,
                R.NO_CLIENT_CERTIFICATE,
                R.NOT_ALLOWLISTED,
                R.CERTIFICATE_REVOKED,
            ),
            "UNAUTHENTICATED",
        ),
        **dict.fromkeys(
            (
                R.TOO_MANY_CONNECTIONS,
                R.TOO_MANY_SESSIONS,
                R.MESSAGE_TOO_LARGE,
                R.RATE_LIMITED,
                R.QUEUE_FULL,
                R.STATE_TOO_LARGE,
            ),
            "RESOURCE_EXHAUSTED",
        ),
        **dict.fromkeys(
            (
                R.HELLO_REQUIRED,
                R.INVALID_INSTANCE_ID,
                R.DUPLICATE_HELLO,
                R.MALFORMED_FRAME,
                R.MISSING_REQUEST,
                R.MORE_THAN_ONE_REQUEST,
                R.UNKNOWN_CORRELATION,
                R.INVALID_MESSAGE_TYPE,
                R.INVALID_PAYLOAD,
                R.INVALID_TIMEOUT,
                R.INVALID_ERROR_REPLY,
                R.INVALID_STATE_KEY,
                R.INVALID_STATE_VALUE,
            ),
            "INVALID_ARGUMENT",
        ),
        **dict.fromkeys(
            (R.HELLO_TIMEOUT, R.SLOW_CONSUMER, R.UNFINISHED_MESSAGE, R.REQUEST_TIMEOUT),
            "DEADLINE_EXCEEDED",
        ),
        **dict.fromkeys(
            (R.SESSION_REQUIRED, R.INSTANCE_NOT_BOUND, R.CIRCUIT_OPEN, R.CORRELATION_EXPIRED),
            "FAILED_PRECONDITION",
        ),
        # A reply from an agent that is not the request's target is ``not_authorized``
        # too (the store's NOT_THE_TARGET): the same code as the ACL's refusal.
        **dict.fromkeys((R.NOT_AUTHORIZED, R.DLP_BLOCKED), "PERMISSION_DENIED"),
        R.UNKNOWN_TARGET: "NOT_FOUND",
        **dict.fromkeys(
            (R.STORE_UNAVAILABLE, R.STORE_NOT_DURABLE, R.SERVER_SHUTTING_DOWN), "UNAVAILABLE"
        ),
        **dict.fromkeys((R.REPLACED_BY_NEW_SESSION, R.STATE_CONFLICT), "ABORTED"),
        **dict.fromkeys((R.UNKNOWN_METHOD, R.UNSUPPORTED_ENCODING), "UNIMPLEMENTED"),
        **dict.fromkeys((R.INTERNAL_ERROR, R.EXPECTED_HEADERS), "INTERNAL"),
    }
)


class Refusal(Exception):
    """The server will not do what a client asked: ``reason``, its status ``code``, and
    ``retry_after`` (seconds, for ``rate_limited`` and ``circuit_open``).

    ``detail`` follows the reason in the status message (only ``unknown method``
    names the method); ``draft`` is the refused message's audit record, for the
    router to write.
    """

    def __init__(
        self,
        reason: Reason,
        *,
        retry_after: float | None = None,
        detail: str = "",
        draft: AuditDraft | None = None,
    ) -> None:
        self.reason = reason
        self.code = STATUS[reason]
        self.retry_after = retry_after
        self.detail = detail
        self.draft = draft
        super().__init__(f"{self.code} {self.message}")

    @property
    def message(self) -> str:
        """The status message: the reason token (and the detail, if any)."""
        return f"{self.reason.value} {self.detail}" if self.detail else self.reason.value
