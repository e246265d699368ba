"""``/metrics`` in the Prometheus text exposition format (0.0.4), and the health probes.

Written here rather than with ``prometheus_client``: the counters already live in
``ServerMetrics`` (plain integers the message path bumps without a lock), so all
an exposition needs is to print them, and printing the text format is a page of
code; ``prometheus_client`` would add a dependency, a global registry and a lock
per increment, and its HTTP server runs in a thread, outside the server's nursery.

Metric names (every one prefixed ``mas_``)::

    mas_up                                  gauge    1 while the server runs
    mas_uptime_seconds                      gauge
    mas_sessions                            gauge    connected agent instances
    mas_connections                         gauge    open mTLS connections
    mas_messages_routed_total{decision}     counter  routing decisions (ALLOWED, refusals, ...)
    mas_deliveries_total{outcome}           counter  DELIVERED, NACKED, DLQ, EXPIRED
    mas_refusals_total{decision,reason}     counter
    mas_routing_latency_seconds             histogram arrival to decision, routed messages
    mas_agent_messages_sent_total{agent}    counter  routed messages the agent sent
    mas_agent_messages_refused_total{agent} counter
    mas_agent_messages_delivered_total{agent} counter acked deliveries to the agent
    mas_agent_sessions{agent}               gauge
    mas_queue_depth{agent}                  gauge    waiting in the agent's queue
    mas_in_flight{agent}                    gauge    delivered, not yet acked
    mas_dead_letters{agent}                 gauge    in the dead-letter queue
    mas_circuit_breaker_open{target,state}  gauge    1 per breaker that is not closed
    mas_store_up                            gauge    1 if the store answered the snapshot
    mas_store_operation_seconds{operation}  histogram each store call
    mas_audit_records_total                 counter  records this server wrote to the chain
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Final

from ..control.protocol import StatusSnapshot
from .http import Response
from .metrics import DELIVERY_OUTCOMES, REFUSED, ROUTED, Histogram, ServerMetrics
from .snapshot import StatusReader

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: Sequence[tuple[str, str]]) -> str:
    if not pairs:
        return ""
    return "{" + ",".join(f'{name}="{_escape(value)}"' for name, value in pairs) + "}"


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


class _Text:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, value: float, labels: Sequence[tuple[str, str]] = ()) -> None:
        self.lines.append(f"{name}{_labels(labels)} {_number(value)}")

    def histogram(
        self,
        name: str,
        bounds: Iterable[float],
        counts: Sequence[int],
        total: float,
        count: int,
        labels: Sequence[tuple[str, str]] = (),
    ) -> None:
        cumulative = 0
        for bound, n in zip([*bounds, math.inf], counts, strict=True):
            cumulative += n
            self.sample(f"{name}_bucket", cumulative, [*labels, ("le", _number(bound))])
        self.sample(f"{name}_sum", total, labels)
        self.sample(f"{name}_count", count, labels)


def render(snapshot: StatusSnapshot, metrics: ServerMetrics) -> str:
    """The exposition text of one snapshot and the live counters."""
    out = _Text()
    out.family("mas_up", "gauge", "1 while the server runs")
    out.sample("mas_up", 1)
    out.family("mas_uptime_seconds", "gauge", "seconds since the server started")
    out.sample("mas_uptime_seconds", round(snapshot.uptime, 3))
    out.family("mas_sessions", "gauge", "connected agent instances")
    out.sample("mas_sessions", snapshot.sessions)
    out.family("mas_connections", "gauge", "open mTLS connections")
    out.sample("mas_connections", snapshot.connections)
    decisions = metrics.decisions
    out.family("mas_messages_routed_total", "counter", "routing decisions by kind")
    for decision in sorted(ROUTED | REFUSED):
        out.sample("mas_messages_routed_total", decisions[decision], [("decision", decision)])
    out.family("mas_deliveries_total", "counter", "delivery outcomes by kind")
    for outcome in DELIVERY_OUTCOMES:
        out.sample("mas_deliveries_total", decisions[outcome], [("outcome", outcome)])
    out.family("mas_refusals_total", "counter", "refused messages by decision and reason")
    for (decision, reason), count in sorted(metrics.refusals.items()):
        out.sample("mas_refusals_total", count, [("decision", decision), ("reason", reason)])
    latency = metrics.latency
    out.family("mas_routing_latency_seconds", "histogram", "arrival to decision of routed messages")
    out.histogram(
        "mas_routing_latency_seconds", latency.bounds, latency.counts, latency.sum, latency.count
    )
    per_agent = (
        ("mas_agent_messages_sent_total", "counter", "routed messages the agent sent", "sent"),
        ("mas_agent_messages_refused_total", "counter", "refused messages of the agent", "refused"),
        (
            "mas_agent_messages_delivered_total",
            "counter",
            "deliveries the agent acked",
            "delivered",
        ),
        ("mas_agent_sessions", "gauge", "connected instances of the agent", "connected"),
        ("mas_queue_depth", "gauge", "messages waiting in the agent's queue", "queue_depth"),
        ("mas_in_flight", "gauge", "deliveries to the agent not yet acked", "in_flight"),
        (
            "mas_dead_letters",
            "gauge",
            "the agent's messages in the dead-letter queue",
            "dead_letters",
        ),
    )
    for name, kind, help_text, field in per_agent:
        out.family(name, kind, help_text)
        for row in snapshot.agents:
            value = getattr(row, field)
            if value is not None:
                out.sample(name, value, [("agent", row.agent_id)])
    out.family("mas_circuit_breaker_open", "gauge", "1 for each breaker that is not closed")
    for breaker in snapshot.breakers:
        out.sample(
            "mas_circuit_breaker_open",
            1,
            [("target", breaker.target_id), ("state", breaker.state)],
        )
    out.family("mas_store_up", "gauge", "1 if the store answered the last snapshot")
    out.sample("mas_store_up", 1 if snapshot.store.reachable else 0)
    out.family("mas_store_operation_seconds", "histogram", "duration of each store call")
    for operation, histogram in sorted(metrics.store_operations.items()):
        _store_histogram(out, operation, histogram)
    out.family("mas_audit_records_total", "counter", "audit records this server wrote")
    out.sample("mas_audit_records_total", metrics.audit_records)
    return "\n".join(out.lines) + "\n"


def _store_histogram(out: _Text, operation: str, histogram: Histogram) -> None:
    out.histogram(
        "mas_store_operation_seconds",
        histogram.bounds,
        histogram.counts,
        histogram.sum,
        histogram.count,
        [("operation", operation)],
    )


class Endpoints:
    """The HTTP handler: ``/metrics``, ``/healthz`` (alive), ``/readyz`` (store, listener)."""

    def __init__(
        self, reader: StatusReader, metrics: ServerMetrics, listening: Callable[[], bool]
    ) -> None:
        self._reader = reader
        self._metrics = metrics
        self._listening = listening  # is the gRPC listener up?

    async def __call__(self, path: str) -> Response | None:
        if path == "/metrics":
            snapshot = await self._reader.snapshot()
            return Response(200, render(snapshot, self._metrics).encode(), CONTENT_TYPE)
        if path == "/healthz":
            return Response(200, b"ok\n")
        if path == "/readyz":
            problems = []
            if not self._listening():
                problems.append("the gRPC listener is not up")
            unreachable = await self._reader.store_reachable()
            if unreachable:
                problems.append(f"the store is unreachable: {unreachable}")
            if problems:
                return Response(503, ("not ready: " + "; ".join(problems) + "\n").encode())
            return Response(200, b"ready\n")
        return None
