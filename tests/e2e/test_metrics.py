"""``/metrics``, ``/healthz`` and ``/readyz`` of real servers, read with a real HTTP client."""

from __future__ import annotations

import re
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from operating import write_load_project
from processes import free_port, mas_process, read, wait_for
from redis_server import require_redis_server, running_redis

_SAMPLE = re.compile(r"^([a-z_]+)(\{[^}]*\})? (\S+)$")


def _get(url: str, method: str = "GET") -> tuple[int, str, str]:
    """(status, content type, body) of one request."""
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def _samples(text: str) -> dict[str, float]:
    """``name{labels}`` -> value, for every sample line of an exposition."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        match = _SAMPLE.match(line)
        assert match, f"not a sample line: {line!r}"
        name, labels, value = match.groups()
        samples[name + (labels or "")] = float(value)
    return samples


@pytest.mark.slow
def test_metrics_move_with_the_traffic(tmp_path: Path) -> None:
    port = free_port()
    write_load_project(tmp_path, store="sqlite", metrics_port=port, pause=0.02)
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "run.log"
    with mas_process("run", str(tmp_path), cwd=tmp_path, log=log, path=(tmp_path,)):
        wait_for(lambda: "listening on" in read(log), 60, "the server")
        assert _get(f"{base}/healthz")[:2] == (200, "text/plain; charset=utf-8")
        status, content_type, first_text = _get(f"{base}/metrics")
        assert status == 200
        assert content_type == "text/plain; version=0.0.4; charset=utf-8"
        first = _samples(first_text)
        time.sleep(1.5)
        second = _samples(_get(f"{base}/metrics")[2])
        for name in (
            'mas_messages_routed_total{decision="ALLOWED"}',
            'mas_agent_messages_sent_total{agent="sender"}',
            'mas_agent_messages_delivered_total{agent="sink"}',
            'mas_deliveries_total{outcome="DELIVERED"}',
            "mas_routing_latency_seconds_count",
            "mas_audit_records_total",
            'mas_store_operation_seconds_count{operation="route_batch"}',
        ):
            assert second[name] > first.get(name, 0), name
        # 1.5 s at one message per 20 ms: the counters moved as the traffic did, no more.
        moved = second['mas_agent_messages_sent_total{agent="sender"}'] - first.get(
            'mas_agent_messages_sent_total{agent="sender"}', 0
        )
        assert 10 <= moved <= 120
        assert second['mas_messages_routed_total{decision="AUTHZ_DENIED"}'] == 0
        assert second["mas_sessions"] == 2
        assert second["mas_store_up"] == 1
        assert 'mas_queue_depth{agent="sink"}' in second
        assert (
            second['mas_routing_latency_seconds_bucket{le="+Inf"}']
            == (second["mas_routing_latency_seconds_count"])
        )
        buckets = [v for k, v in second.items() if k.startswith("mas_routing_latency_seconds_b")]
        assert buckets == sorted(buckets)  # cumulative
        assert _get(f"{base}/readyz")[:1] == (200,)
        assert _get(f"{base}/nothing")[0] == 404
        assert _get(f"{base}/metrics", method="POST")[0] == 405
        # A head past the limit is refused; the endpoint goes on serving.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            raw.sendall(b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20_000 + b"\r\n\r\n")
            assert raw.recv(64).startswith(b"HTTP/1.1 431")
        assert _get(f"{base}/healthz")[0] == 200
    assert "Traceback" not in read(log)


@pytest.mark.slow
def test_readyz_follows_the_redis_store(tmp_path: Path) -> None:
    require_redis_server()
    port = free_port()
    with running_redis() as redis:
        write_load_project(tmp_path, store="redis", redis_url=redis.url, metrics_port=port)
        ready = f"http://127.0.0.1:{port}/readyz"
        log = tmp_path / "serve.log"
        with mas_process("serve", str(tmp_path), cwd=tmp_path, log=log):
            wait_for(lambda: "listening on" in read(log), 60, "the server")
            assert _get(ready)[:1] == (200,)
            redis.stop()
            wait_for(lambda: _get(ready)[0] == 503, 30, "/readyz to turn unready")
            body = _get(ready)[2]
            assert "the store is unreachable" in body
            assert _get(f"http://127.0.0.1:{port}/healthz")[0] == 200  # alive all along
            redis.start()
            wait_for(lambda: _get(ready)[0] == 200, 60, "/readyz to be ready again")
    assert "Traceback" not in read(log)
