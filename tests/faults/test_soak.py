"""A mixed soak: 14 agents send, request and reply (some deliveries nacked) for a while.

Real processes: ``mas serve`` on a SQLite store (``sync: full``, with a JSONL
audit file, so the audit follower runs too), and four ``mas agent`` processes:
5 sender instances (2 concurrent sends each, at most 8 a second per send task),
3 recorder instances (failing the first delivery of one message in 50, which is
then redelivered), 4 requester instances (5 requests a second each; one in 40
asks its replier to be slow and gives up before the reply, which comes late)
and 2 replier instances. About 120 messages a second in all, as in issue 19's
soak. Every ``CHURN`` seconds the requesters' process is killed with SIGKILL,
requests in flight, and started again: new sessions, new instance ids, replies
to instances that never come back.

Nothing accepted may be lost and every request must be answered. The server's
RSS is sampled every ``SAMPLE`` seconds; the first half of the run is warm-up
(SQLite's page cache, the allocator's arenas, the sessions' buffers fill up),
and the test fails when the least-squares slope of RSS over the second half
exceeds the tolerance (``SHORT_MAX_SLOPE_MB_PER_MIN``, or
``LONG_MAX_SLOPE_MB_PER_MIN`` for runs of ``LONG_SECONDS`` or more; see there).

Duration: 60 s; ``--long-faults`` 20 minutes; ``MAS_SOAK_SECONDS`` overrides
both. ``MAS_SOAK_TRACEMALLOC=DIR`` runs the server under ``traced_server.py``
(the top 20 growing allocation sites between half time and 95 % of the run
written to ``DIR/growth.txt``).
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import pytest
from fault_harness import (
    HERE,
    AgentSpec,
    Tally,
    agent_process,
    certify,
    drain,
    long_faults,
    report,
    tail,
    write_project,
)
from processes import ServerProcess, free_port

pytestmark = pytest.mark.slow

SAMPLE = 2.0  # seconds between RSS samples
CHURN = 20.0  # seconds between two kill -9 of the requesters' process

# Tolerance of the RSS slope over the second half, MB a minute. Issue 19's leak was
# +1.5 MB/min at this rate (about 200 bytes per message). Measured here on a 2-core machine
# (issue 19's closing note): 60 s runs 0.19 and 0.34 MB/min when alone, 1.68 when the machine
# was busy with other tests (the warm-up then lasts past half time: the curve was flat from
# 40 s on); 600 s runs 0.007 (no churn) and 0.25 (requesters restarted every 20 s). So the
# short form can only catch gross leaks (twice issue 19's) without failing on a busy
# machine's warm-up; the long form (>= 5 minutes, the slope fitted over minutes) catches
# issue 19's leak with room to spare over the churn's 0.25.
SHORT_MAX_SLOPE_MB_PER_MIN = 3.0
LONG_MAX_SLOPE_MB_PER_MIN = 0.5
LONG_SECONDS = 300.0  # runs at least this long use the long form's tolerance


_AGENTS = ("sender", "recorder", "requester", "replier")


def _rss_mb(pid: int) -> float | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None


def slope_mb_per_min(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MB) samples, in MB a minute."""
    n = len(samples)
    mean_t = sum(t for t, _ in samples) / n
    mean_m = sum(m for _, m in samples) / n
    var = sum((t - mean_t) ** 2 for t, _ in samples)
    cov = sum((t - mean_t) * (m - mean_m) for t, m in samples)
    return 60 * cov / var


def _seconds(config: pytest.Config) -> float:
    if os.environ.get("MAS_SOAK_SECONDS"):
        return float(os.environ["MAS_SOAK_SECONDS"])
    return 1200.0 if long_faults(config) else 60.0


def test_mixed_soak_loses_nothing_and_memory_plateaus(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    seconds = _seconds(request.config)
    write_project(
        tmp_path,
        port=free_port(),
        store="{backend: sqlite}",
        agents=[
            AgentSpec(
                "sender",
                "Sender",
                {"targets": ["recorder"], "seconds": seconds, "concurrency": 2, "rate": 8},
                instances=5,
            ),
            AgentSpec("recorder", "Recorder", {"nack_every": 50}, instances=3),
            AgentSpec(
                "requester",
                "Requester",
                {
                    "target": "replier",
                    "until": time.time() + seconds + 10,  # + the processes' start
                    "concurrency": 1,
                    "rate": 5,
                    "slow_every": 40,
                    "slow_timeout": 1.0,
                },
                instances=4,
            ),
            AgentSpec("replier", "Replier", {"slow_seconds": 1.5}, instances=2),
        ],
        permissions=[
            {"type": "allow", "sender": "sender", "targets": ["recorder"]},
            {"type": "allow", "sender": "requester", "targets": ["replier"]},
        ],
        limits={"redelivery_backoff": 0.2},
        gateway={"audit": {"file_path": "audit.jsonl"}},
    )
    certify(tmp_path)
    logs = {name: tmp_path / f"{name}.log" for name in ("server", *_AGENTS)}
    traced = os.environ.get("MAS_SOAK_TRACEMALLOC")
    runner = (
        (str(HERE / "traced_server.py"), traced, str(seconds / 2), str(seconds * 0.95))
        if traced
        else ()
    )
    samples: list[tuple[float, float]] = []
    churns = 0
    with ServerProcess(tmp_path, logs["server"], path=(HERE,), runner=runner) as server:
        with (
            agent_process("recorder", tmp_path, logs["recorder"]) as recorder,
            agent_process("replier", tmp_path, logs["replier"]) as replier,
            agent_process("sender", tmp_path, logs["sender"]) as sender,
            contextlib.ExitStack() as requesters,
        ):
            requester = requesters.enter_context(
                agent_process("requester", tmp_path, logs["requester"])
            )
            began = last_churn = time.monotonic()
            deadline = began + seconds + 120
            while sender.poll() is None or requester.poll() is None:
                assert time.monotonic() < deadline, "the soak's agents did not stop in time"
                assert server.alive(), tail(logs["server"])
                now = time.monotonic()
                rss = _rss_mb(server.pid)
                if rss is not None and now - began <= seconds:
                    samples.append((now - began, rss))
                if now - last_churn >= CHURN and now - began < seconds - CHURN / 2:
                    # kill -9 the requesters, requests in flight, and start new instances
                    # (new instance ids: the old ones' replies go nowhere, ever)
                    requester.kill()
                    requester.wait(timeout=30)
                    requester = requesters.enter_context(
                        agent_process("requester", tmp_path, logs["requester"])
                    )
                    last_churn, churns = now, churns + 1
                time.sleep(SAMPLE)
            assert sender.returncode == 0, tail(logs["sender"])
            assert requester.returncode == 0, tail(logs["requester"])
            drain([logs["sender"]], [logs["recorder"]])
            tally = Tally.read(logs["sender"], logs["recorder"], logs["requester"])
            assert recorder.poll() is None, tail(logs["recorder"])
            assert replier.poll() is None, tail(logs["replier"])
        assert server.terminate() == 0, tail(logs["server"])
    second_half = [(t, m) for t, m in samples if t >= seconds / 2]
    slope = slope_mb_per_min(second_half)
    step = max(1, len(samples) // 30)
    report(
        f"soak {seconds:g}s",
        **tally.figures(),
        rss_start_mb=round(samples[0][1], 1),
        rss_end_mb=round(samples[-1][1], 1),
        slope_second_half_mb_per_min=round(slope, 3),
        rss_curve=[(round(t), round(m, 1)) for t, m in samples[::step]],
        requester_restarts=churns,
        traced=traced or None,
    )
    assert not tally.lost, f"{len(tally.lost)} accepted messages never delivered"
    assert tally.nacks > 0 and tally.replies > 0
    assert not tally.failed_requests, tally.failed_requests[:5]
    tolerance = LONG_MAX_SLOPE_MB_PER_MIN if seconds >= LONG_SECONDS else SHORT_MAX_SLOPE_MB_PER_MIN
    if not traced:  # tracemalloc's own bookkeeping grows with every live block
        assert slope <= tolerance, (
            f"the server's RSS keeps growing after warm-up: {slope:.2f} MB/min over the "
            f"second half (tolerance {tolerance} MB/min); samples: {second_half}"
        )
