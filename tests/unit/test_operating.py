"""The pure parts of operating a server: counters, exposition text, HTTP heads, frames, screens."""

from __future__ import annotations

import math

import msgspec
import pytest

from mas.audit.record import AuditDraft
from mas.cli.status import quantile, render_status, status_json
from mas.cli.top import render_top
from mas.control.protocol import (
    HEADER,
    MAX_REQUEST_BYTES,
    AgentRow,
    DlqReplayRequest,
    FrameError,
    LatencyHistogram,
    RefusalCount,
    StatusRequest,
    StatusSnapshot,
    StoreHealth,
    decode_request,
    encode_frame,
    frame_length,
)
from mas.server.http import HttpError, Response, parse_request_head, render_response
from mas.server.metrics import MAX_REASONS, OTHER, WINDOW, ServerMetrics
from mas.server.prometheus import render


def _draft(decision: str, **fields: object) -> AuditDraft:
    return AuditDraft(time=100.0, decision=decision, **fields)  # type: ignore[arg-type]


# -- counters -------------------------------------------------------------------------------


def test_counters_follow_each_decision_to_its_agent() -> None:
    metrics = ServerMetrics(["a", "b"], started_at=0.0)
    metrics.observe(_draft("ALLOWED", sender_id="a", target_id="b", latency_ms=0.3))
    metrics.observe(_draft("DLP_REDACTED", sender_id="a", target_id="b", latency_ms=30.0))
    metrics.observe(_draft("RATE_LIMITED", sender_id="a", reason="rate_limited"))
    metrics.observe(_draft("DELIVERED", target_id="b"))
    metrics.observe(_draft("NACKED", target_id="b"))
    metrics.observe(_draft("DLQ", target_id="b"))
    metrics.observe(_draft("EXPIRED", target_id="b"))
    a, b = metrics.agents["a"], metrics.agents["b"]
    assert (a.sent, a.refused, a.delivered, a.last_activity) == (2, 1, 0, 100.0)
    assert (b.delivered, b.nacked, b.dead_lettered, b.expired) == (1, 1, 1, 1)
    assert metrics.refusals == {("RATE_LIMITED", "rate_limited"): 1}
    assert metrics.latency.count == 2
    assert metrics.latency.sum == pytest.approx(0.0303)
    assert metrics.decisions["ALLOWED"] == 1 and metrics.decisions["DELIVERED"] == 1


def test_ids_nobody_configured_never_grow_the_counters() -> None:
    metrics = ServerMetrics(["a"], started_at=0.0)
    for index in range(1000):
        metrics.observe(_draft("AUTHN_DENIED", sender_id=f"x{index}", reason=f"r{index}"))
        metrics.observe(_draft("ALLOWED", sender_id="a", target_id=f"t{index}"))
        metrics.observe(_draft("DELIVERED", target_id=f"t{index}"))
    assert set(metrics.agents) == {"a"}
    assert metrics.other.refused == 1000 and metrics.other.delivered == 1000
    assert len(metrics.refusals) == MAX_REASONS
    assert metrics.refusals[("AUTHN_DENIED", OTHER)] == 1000 - (MAX_REASONS - 1)


def test_a_reload_keeps_the_counters_of_agents_that_stay() -> None:
    metrics = ServerMetrics(["a", "b"], started_at=0.0)
    metrics.observe(_draft("ALLOWED", sender_id="a"))
    metrics.configure(["a", "c"])
    assert set(metrics.agents) == {"a", "c"}
    assert metrics.agents["a"].sent == 1


def test_the_last_minute_counts_only_decisions_of_the_last_minute() -> None:
    metrics = ServerMetrics([], started_at=0.0)
    assert metrics.last_minute(0.0) == {}
    metrics.observe(_draft("ALLOWED"))
    metrics.sample(0.0)
    for second in range(1, 100):
        metrics.observe(_draft("ALLOWED"))
        metrics.sample(float(second))
    # 99 seconds of one decision a second: the window holds the last WINDOW of them.
    assert metrics.last_minute(99.0) == {"ALLOWED": int(WINDOW)}


def test_latency_buckets_take_each_observation_once() -> None:
    metrics = ServerMetrics([], started_at=0.0)
    for ms in (0.05, 0.1, 7.0, 5000.0):
        metrics.observe(_draft("ALLOWED", latency_ms=ms))
    counts = metrics.latency.counts
    assert sum(counts) == 4
    assert counts[0] == 2  # 0.05 ms and exactly the first bound (0.1 ms)
    assert counts[-1] == 1  # 5 s is above every bound


# -- the exposition -------------------------------------------------------------------------


def _snapshot(**changes: object) -> StatusSnapshot:
    row = AgentRow(
        agent_id='we"ird\\id',
        configured=True,
        instances=2,
        connected=1,
        queue_depth=3,
        in_flight=1,
        retrying=0,
        dead_letters=None,
        sent=10,
        refused=1,
        delivered=9,
        nacked=0,
        dead_lettered=0,
        expired=0,
        last_activity=95.0,
    )
    snapshot = StatusSnapshot(
        server_id="host",
        version="0.1.0",
        pid=42,
        config_path="/srv/mas.yaml",
        time=100.0,
        started_at=40.0,
        listen="127.0.0.1:50051",
        store=StoreHealth(backend="sqlite", where="/srv/mas.sqlite3", reachable=True),
        sessions=1,
        connections=1,
        agents=[row],
        decisions={"ALLOWED": 10},
        decisions_last_minute={"ALLOWED": 4, "RATE_LIMITED": 1},
        refusals=[RefusalCount(decision="RATE_LIMITED", reason="rate_limited", count=1)],
        latency=LatencyHistogram(bounds=[0.001, 0.01], counts=[5, 4, 1], sum=0.05, count=10),
        breakers=[],
    )
    return msgspec.structs.replace(snapshot, **changes)


def test_the_exposition_is_valid_text_format() -> None:
    metrics = ServerMetrics(["a"], started_at=0.0)
    for ms in (0.05, 3.0, 2000.0):
        metrics.observe(_draft("ALLOWED", sender_id="a", latency_ms=ms))
    metrics.observe(_draft("INVALID", sender_id="a", reason='bad\n"x"'))
    metrics.observe_store("enqueue_many", 0.002)
    text = render(_snapshot(), metrics)
    lines = text.splitlines()
    assert text.endswith("\n")
    families = [line.split()[2] for line in lines if line.startswith("# TYPE")]
    assert len(families) == len(set(families))  # each family declared once
    samples = {
        line.rsplit(" ", 1)[0]: line.rsplit(" ", 1)[1] for line in lines if not line.startswith("#")
    }
    assert samples['mas_messages_routed_total{decision="ALLOWED"}'] == "3"
    assert samples['mas_refusals_total{decision="INVALID",reason="bad\\n\\"x\\""}'] == "1"
    assert samples['mas_queue_depth{agent="we\\"ird\\\\id"}'] == "3"
    assert 'mas_dead_letters{agent="we\\"ird\\\\id"}' not in samples  # unknown: not made up
    buckets = [
        int(v) for k, v in samples.items() if k.startswith("mas_routing_latency_seconds_bucket")
    ]
    assert buckets == sorted(buckets) and buckets[-1] == 3
    assert samples['mas_routing_latency_seconds_bucket{le="+Inf"}'] == "3"
    assert samples["mas_routing_latency_seconds_count"] == "3"
    assert samples['mas_store_operation_seconds_count{operation="enqueue_many"}'] == "1"
    assert samples["mas_uptime_seconds"] == "60"


# -- HTTP heads -----------------------------------------------------------------------------


def test_a_get_head_parses_to_its_path() -> None:
    head = b"GET /metrics?x=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: */*"
    assert tuple(parse_request_head(head)) == ("GET", "/metrics")


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"POST /metrics HTTP/1.1", 405),
        (b"GET /metrics", 400),
        (b"GET metrics HTTP/1.1", 400),
        (b"GET /metrics HTTP/2.0", 400),
        (b"GET /metrics HTTP/1.1\r\nno colon here", 400),
        (b"GET /metrics HTTP/1.1\r\n Folded: x", 400),
        (b"GET /\xff HTTP/1.1", 400),
        (b"GET /metrics HTTP/1.1\r\nContent-Length: 5", 413),
        (b"GET /metrics HTTP/1.1\r\nTransfer-Encoding: chunked", 413),
    ],
)
def test_a_head_this_server_will_not_serve_is_refused_with_a_status(
    head: bytes, status: int
) -> None:
    with pytest.raises(HttpError) as caught:
        parse_request_head(head)
    assert caught.value.status == status


def test_a_response_says_its_length_and_closes() -> None:
    wire = render_response(Response(200, b"ok\n"))
    assert wire.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Length: 3\r\n" in wire and b"Connection: close\r\n" in wire
    assert wire.endswith(b"\r\n\r\nok\n")
    assert render_response(Response(200, b"ok\n"), head_only=True).endswith(b"\r\n\r\n")


# -- frames ---------------------------------------------------------------------------------


def test_frames_round_trip_and_are_bounded() -> None:
    frame = encode_frame(DlqReplayRequest(message_ids=["m"], operator="me@host"))
    assert frame_length(frame[: HEADER.size], MAX_REQUEST_BYTES) == len(frame) - HEADER.size
    assert decode_request(frame[HEADER.size :]) == DlqReplayRequest(
        message_ids=["m"], operator="me@host"
    )
    assert decode_request(encode_frame(StatusRequest())[HEADER.size :]) == StatusRequest()
    with pytest.raises(FrameError, match="over the limit"):
        frame_length(HEADER.pack(MAX_REQUEST_BYTES + 1), MAX_REQUEST_BYTES)
    with pytest.raises(FrameError):
        decode_request(msgspec.msgpack.encode({"op": "status", "typo": True}))
    with pytest.raises(FrameError):
        decode_request(msgspec.msgpack.encode({"op": "dlq_replay", "message_ids": [""]}))


# -- screens --------------------------------------------------------------------------------


def test_quantiles_come_from_the_bucket_bounds() -> None:
    assert quantile([0.001, 0.01], [0, 0, 0], 0.5) is None
    assert quantile([0.001, 0.01], [5, 4, 1], 0.5) == 0.001
    assert quantile([0.001, 0.01], [5, 4, 1], 0.9) == 0.01
    assert quantile([0.001, 0.01], [5, 4, 1], 0.99) == math.inf


def test_status_text_and_json_say_what_the_snapshot_holds() -> None:
    text = render_status(_snapshot())
    assert "server     host (pid 42, mas 0.1.0), up 1m00s" in text
    assert "store      sqlite /srv/mas.sqlite3: reachable" in text
    assert "last minute  ALLOWED 4, RATE_LIMITED 1" in text
    assert "breakers     all closed" in text
    row = next(line for line in text.splitlines() if line.startswith("we"))
    assert row.split()[1:4] == ["1/2", "3", "1"]
    assert "5s ago" in row
    down = render_status(
        _snapshot(store=StoreHealth(backend="redis", where="redis://h", reachable=False, error="e"))
    )
    assert "UNREACHABLE (e)" in down
    data = msgspec.json.decode(status_json(_snapshot()))
    assert data["uptime"] == 60.0 and data["agents"][0]["queue_depth"] == 3


def _agent(agent_id: str, sent: int, delivered: int, depth: int) -> AgentRow:
    return AgentRow(
        agent_id=agent_id,
        configured=True,
        instances=1,
        connected=1,
        queue_depth=depth,
        in_flight=0,
        retrying=0,
        dead_letters=0,
        sent=sent,
        refused=0,
        delivered=delivered,
        nacked=0,
        dead_lettered=0,
        expired=0,
        last_activity=None,
    )


def test_top_computes_rates_over_the_last_interval_and_sorts_on_request() -> None:
    before = _snapshot(time=100.0, agents=[_agent("slow", 0, 0, 50), _agent("fast", 0, 0, 1)])
    after = _snapshot(time=102.0, agents=[_agent("slow", 2, 0, 60), _agent("fast", 200, 100, 2)])
    by_rate = render_top(after, before, "rate")
    assert "in 101.0 msg/s   out 50.0 msg/s" in by_rate[2]
    rows = [line.split()[0] for line in by_rate if line.startswith(("slow", "fast"))]
    assert rows == ["fast", "slow"]
    fast = next(line for line in by_rate if line.startswith("fast")).split()
    assert fast[2:4] == ["100.0", "50.0"]
    by_depth = render_top(after, before, "depth")
    assert [line.split()[0] for line in by_depth if line.startswith(("slow", "fast"))] == [
        "slow",
        "fast",
    ]
    assert "sorted by depth" in "\n".join(by_depth)
    narrow = render_top(after, before, "rate", width=20, height=5)
    assert len(narrow) == 5 and all(len(line) <= 20 for line in narrow)
    refused = [RefusalCount(decision="RATE_LIMITED", reason="rate_limited", count=11)]
    later = msgspec.structs.replace(after, refusals=refused)
    assert "RATE_LIMITED rate_limited 5.0/s (11 in all)" in render_top(later, before, "rate")[3]
    # The first screen has nothing to compare with: rates are zero, not made up.
    assert "in 0.0 msg/s" in render_top(after, None, "rate")[2]
