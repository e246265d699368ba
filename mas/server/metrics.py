"""The server's live counters: per agent, per decision, routing latency, store operations.

Pure (no Trio, no I/O): the audit path calls ``ServerMetrics.observe`` with every
decision it sees (routed, refused, delivered, nacked, dead-lettered, expired,
operator actions), and the readers (``mas status``, ``mas top``, ``/metrics``)
read the counters through ``mas.server.snapshot``.

Cost per message: a dict lookup and a few integer bumps. The per-agent rows are
made when the configuration is applied (never per message), and only for the
agents it lists: a decision about an id nobody configured (an unknown sender, a
typo in a target) is counted under ``OTHER`` instead, so a client choosing ids
cannot make the server grow a row per id. The refusal reasons are bounded the same
way (``MAX_REASONS``).
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterable
from typing import Final

from ..audit.record import DECISIONS, AuditDraft

OTHER: Final = "(other)"  # the row for ids the configuration does not list
MAX_REASONS: Final = 64  # distinct (decision, reason) pairs counted; beyond, one "other" pair
WINDOW: Final = 60.0  # seconds of the "last minute" view of decisions
SAMPLE_INTERVAL: Final = 1.0  # seconds between samples of that window
# Routing latency buckets, seconds (Prometheus convention: upper bounds, +Inf implied).
LATENCY_BUCKETS: Final = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)
# Store operation buckets, seconds.
STORE_BUCKETS: Final = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0)

ROUTED: Final = frozenset({"ALLOWED", "ALERT", "DLP_REDACTED"})  # stored for delivery
REFUSED: Final = frozenset(
    {"AUTHN_DENIED", "AUTHZ_DENIED", "RATE_LIMITED", "CIRCUIT_OPEN", "DLP_BLOCKED", "INVALID"}
)
DELIVERY_OUTCOMES: Final = ("DELIVERED", "NACKED", "DLQ", "EXPIRED")


class Histogram:
    """A fixed-bucket histogram: ``counts[i]`` observations <= ``bounds[i]``, the last +Inf."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # not cumulative; the last is above every bound
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1


class AgentCounters:
    """What one agent did since the server started (its messages, and what became of them)."""

    __slots__ = (
        "dead_lettered",
        "delivered",
        "expired",
        "last_activity",
        "nacked",
        "refused",
        "sent",
    )

    def __init__(self) -> None:
        self.sent = 0  # messages it sent that were routed
        self.refused = 0  # messages it sent that were refused
        self.delivered = 0  # messages to it that it acked
        self.nacked = 0  # deliveries to it that it nacked (or that timed out), retried later
        self.dead_lettered = 0
        self.expired = 0  # messages to it dropped because their deadline had passed
        self.last_activity = 0.0  # wall time of its last decision, 0 = none yet


class ServerMetrics:
    """Counters the audit path bumps; read by status, top and the Prometheus endpoint."""

    def __init__(self, agent_ids: Iterable[str], started_at: float) -> None:
        self.started_at = started_at  # wall time
        self.agents: dict[str, AgentCounters] = {}
        self.other = AgentCounters()
        self.decisions: dict[str, int] = dict.fromkeys(DECISIONS, 0)
        self.refusals: dict[tuple[str, str], int] = {}
        self.latency = Histogram(LATENCY_BUCKETS)
        self.store_operations: dict[str, Histogram] = {}
        self.audit_records = 0  # records this server wrote to the store's chain
        self._samples: deque[tuple[float, dict[str, int]]] = deque(maxlen=int(WINDOW) + 2)
        self.configure(agent_ids)

    def configure(self, agent_ids: Iterable[str]) -> None:
        """The configured agents (at start and on reload); counters of kept agents carry over."""
        ids = set(agent_ids)
        self.agents = {agent_id: self.agents.get(agent_id) or AgentCounters() for agent_id in ids}

    def _row(self, agent_id: str) -> AgentCounters:
        return self.agents.get(agent_id) or self.other

    def observe(self, draft: AuditDraft) -> None:
        """Count one decision (called by the audit path for every decision, once)."""
        decision = draft.decision
        self.decisions[decision] += 1
        if decision in ROUTED:
            row = self._row(draft.sender_id)
            row.sent += 1
            row.last_activity = draft.time
            self.latency.observe(draft.latency_ms / 1000.0)
        elif decision in REFUSED:
            row = self._row(draft.sender_id)
            row.refused += 1
            row.last_activity = draft.time
            key = (decision, draft.reason)
            if key in self.refusals:
                self.refusals[key] += 1
            elif len(self.refusals) < MAX_REASONS - 1:
                self.refusals[key] = 1
            else:
                other = (decision, OTHER)
                self.refusals[other] = self.refusals.get(other, 0) + 1
        elif decision == "DELIVERED":
            row = self._row(draft.target_id)
            row.delivered += 1
            row.last_activity = draft.time
        elif decision == "NACKED":
            self._row(draft.target_id).nacked += 1
        elif decision == "DLQ":
            self._row(draft.target_id).dead_lettered += 1
        elif decision == "EXPIRED":
            self._row(draft.target_id).expired += 1

    def observe_store(self, operation: str, seconds: float) -> None:
        """One store call took ``seconds`` (only when the store is timed: Prometheus on)."""
        histogram = self.store_operations.get(operation)
        if histogram is None:
            histogram = self.store_operations[operation] = Histogram(STORE_BUCKETS)
        histogram.observe(seconds)

    # -- the last minute ----------------------------------------------------------------

    def sample(self, now: float) -> None:
        """Remember the decision counts at ``now`` (the server calls this every
        ``SAMPLE_INTERVAL``)."""
        self._samples.append((now, dict(self.decisions)))

    def last_minute(self, now: float) -> dict[str, int]:
        """Decisions of the last ``WINDOW`` seconds (as far back as the samples go), nonzero."""
        base: dict[str, int] | None = None
        for at, counts in self._samples:
            if now - at <= WINDOW:
                base = counts
                break
        if base is None:
            base = dict.fromkeys(DECISIONS, 0) if not self._samples else self._samples[-1][1]
        return {
            decision: count - base.get(decision, 0)
            for decision, count in self.decisions.items()
            if count - base.get(decision, 0)
        }
