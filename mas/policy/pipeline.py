"""The gateway's policy pipeline: an ordered list of filters, each returning a decision value.

Pure: no Trio, no I/O. A filter looks at one :class:`Message` at ``now`` and returns
:class:`Allow`, :class:`Redact` (the payload to deliver instead) or :class:`Deny`. :func:`run`
asks each filter in order and stops at the first ``Deny``; a filter that reserves something
when it allows (the circuit breaker's half-open trial) declares how to give it back once, as
its :meth:`Filter.release`, and :func:`run` calls it when a later filter denies. So a filter
added anywhere in the list needs no code in the others.

The filters of DESIGN section 6, in the gateway's order (``mas.server.gateway`` builds the
list): :class:`Authorize` (ACL + RBAC; a reply is authorized by the request it answers, an
unknown target is ``NOT_FOUND`` after authorization), :class:`RateLimit` (per sender),
:class:`Breaker` (per target; replies skip it), :class:`Dlp` (on the structured payload, last).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

from ..audit.record import Decision, Violation
from ..errors import Reason
from .authz import AccessPolicy
from .breaker import BreakerBook
from .dlp import DlpScanner
from .ratelimit import MemoryRateLimiter, Window

Kind = Literal["send", "request", "reply"]


class Message(NamedTuple):
    """What the filters look at: one send, request or reply."""

    kind: Kind
    sender_id: str
    target_id: str
    message_type: str
    data: dict[str, Any]


class Allow(NamedTuple):
    """Let the message through (``ALERT``: with violations to record)."""

    decision: Literal["ALLOWED", "ALERT"] = "ALLOWED"
    violations: tuple[Violation, ...] = ()


class Redact(NamedTuple):
    """Let the message through with ``data`` in place of its payload."""

    data: dict[str, Any]
    violations: tuple[Violation, ...]


class Deny(NamedTuple):
    """Refuse the message: the reason (its gRPC status comes from the server's one table,
    ``mas.server.refusal.STATUS``) and the audit decision."""

    reason: Reason
    decision: Decision
    retry_after: float | None = None
    violations: tuple[Violation, ...] = ()


Verdict = Allow | Redact | Deny


class Admitted(NamedTuple):
    """A message the pipeline let through, with the payload to deliver."""

    data: dict[str, Any]
    decision: Decision  # ALLOWED, ALERT or DLP_REDACTED
    violations: tuple[Violation, ...]


class Filter(abc.ABC):
    """One step of the pipeline. Subclasses implement :meth:`check`; one that reserves
    something when it allows also implements :meth:`release`."""

    @abc.abstractmethod
    def check(self, message: Message, now: float) -> Verdict:
        """This filter's decision on ``message`` at ``now``."""

    def release(self, message: Message, now: float) -> None:  # noqa: B027 - most reserve nothing
        """Give back what :meth:`check` reserved for ``message``: a later filter denied it.

        A filter that reserves nothing keeps this default, which gives back nothing."""


def run(filters: Sequence[Filter], message: Message, now: float) -> Admitted | Deny:
    """Ask each filter in order; the first ``Deny`` is returned after releasing, latest
    first, what the filters before it reserved."""
    decision: Decision = "ALLOWED"
    violations: tuple[Violation, ...] = ()
    for index, step in enumerate(filters):
        verdict = step.check(message, now)
        if isinstance(verdict, Deny):
            for passed in reversed(filters[:index]):
                passed.release(message, now)
            return verdict
        if isinstance(verdict, Redact):
            message = message._replace(data=verdict.data)
            decision = "DLP_REDACTED"
        elif verdict.decision != "ALLOWED":
            decision = verdict.decision
        violations += verdict.violations
    return Admitted(message.data, decision, violations)


# --- the gateway's filters ------------------------------------------------------------------


class Authorize(Filter):
    """ACL + RBAC. A reply is authorized by the request it answers: it is refused only when
    its target (the requester) was removed since it asked."""

    def __init__(self, access: AccessPolicy, agent_ids: frozenset[str]) -> None:
        self.access = access
        self.agent_ids = agent_ids

    def check(self, message: Message, now: float) -> Verdict:
        if message.kind != "reply":
            if not self.access.allows(message.sender_id, message.target_id):
                return Deny(Reason.NOT_AUTHORIZED, "AUTHZ_DENIED")
            if message.target_id not in self.agent_ids:
                return Deny(Reason.UNKNOWN_TARGET, "INVALID")
        elif message.target_id not in self.agent_ids:
            return Deny(Reason.NOT_AUTHORIZED, "AUTHZ_DENIED")
        return Allow()


class RateLimit(Filter):
    """GCRA per sender, per minute and per hour; an agent may have its own limits."""

    def __init__(
        self,
        rates: MemoryRateLimiter,
        windows: Callable[[str], tuple[Window, ...]],
    ) -> None:
        self.rates = rates
        self.windows = windows  # sender id -> its windows

    def check(self, message: Message, now: float) -> Verdict:
        rate = self.rates.take(message.sender_id, self.windows(message.sender_id), now)
        if not rate.allowed:
            return Deny(Reason.RATE_LIMITED, "RATE_LIMITED", retry_after=rate.retry_after)
        return Allow()


class Breaker(Filter):
    """The circuit breaker of the target. A reply answers a request the target already
    accepted: it is never held back by the requester's breaker (that would only turn a
    failure into a timeout). A half-open breaker admits a trial; a later denial gives it back."""

    def __init__(self, breakers: BreakerBook) -> None:
        self.breakers = breakers

    def check(self, message: Message, now: float) -> Verdict:
        if message.kind == "reply":
            return Allow()
        admission = self.breakers.admit(message.target_id, now)
        if not admission.allowed:
            return Deny(Reason.CIRCUIT_OPEN, "CIRCUIT_OPEN", retry_after=admission.retry_after)
        return Allow()

    def release(self, message: Message, now: float) -> None:
        if message.kind != "reply":
            self.breakers.release(message.target_id, now)  # the admitted trial never went out


class Dlp(Filter):
    """Data loss prevention on the structured payload and the message type."""

    def __init__(self, scanner: DlpScanner) -> None:
        self.scanner = scanner

    def check(self, message: Message, now: float) -> Verdict:
        scan = self.scanner.scan(message.data, message_type=message.message_type)
        violations = tuple(
            Violation(
                rule_id=v.rule_id, type=v.type, action=v.action, severity=v.severity, path=v.path
            )
            for v in scan.violations
        )
        if scan.decision == "DLP_BLOCKED":
            return Deny(Reason.DLP_BLOCKED, "DLP_BLOCKED", violations=violations)
        if scan.decision == "DLP_REDACTED":
            return Redact(scan.data, violations)
        return Allow(scan.decision, violations)
