"""The scenarios a-h of docs/performance.md: what runs, what is measured, what it is compared to.

A *job* is one kind of load run in one server process and one agents process (``workload``
plus its parameters); a *scenario* picks metrics out of a job's result. Several scenarios may
share a job: (c), (e) and (h) are all read from the one-way run, so the CPU per message of (e)
is measured in exactly the window whose throughput (c) reports. (f) is one job per agent count.

Reference figures are those of PERFORMANCE.md (mas-framework, commit a113278, same machine
kind, same split layout). ``ratio`` in the table is always median / reference: above 1 is
better for throughput, below 1 is better for latency, CPU, memory and connections.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

PAYLOAD_TEXT: Final = "benchmark payload: the quick brown fox jumps over the lazy dog"
DLP_PAYLOAD_BYTES: Final = 2048  # size of the JSON text of scenario (g)'s payload
MIB: Final = 1024 * 1024


@dataclass(frozen=True)
class Metric:
    """One row of the table: ``key`` in a job's result, scaled by ``scale`` into ``unit``."""

    key: str
    label: str
    unit: str
    reference: float | None = None
    scale: float = 1.0
    stores: tuple[str, ...] | None = None  # None: every store; else only these
    elsewhere: str = ""  # the row shown for the other stores ("" = no row)


@dataclass(frozen=True)
class Job:
    """One server process plus one agents process running ``workload`` with ``params``."""

    name: str  # unique within a run, e.g. "oneway" or "idle-1000"
    workload: str  # the function in benchmarks.workloads
    params: dict[str, Any]
    deadline: float  # seconds; the runner kills both processes after this
    needs_server: bool = True


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    jobs: tuple[Job, ...]
    metrics: tuple[tuple[str, Metric], ...]  # (job name, metric)
    stores: tuple[str, ...] | None = None  # None: every store; () : store-independent
    note: str = ""  # shown when the scenario has nothing to report for a store


def _rss(job: str, title: str) -> tuple[tuple[str, Metric], ...]:
    """The peak RSS rows of both processes of ``job``."""
    return (
        (job, Metric("server_peak_rss", f"{title}: server peak RSS", "MiB", scale=1 / MIB)),
        (job, Metric("agents_peak_rss", f"{title}: agents peak RSS", "MiB", scale=1 / MIB)),
    )


def build(
    *,
    quick: bool,
    idle_window: float | None = None,
    agent_counts: tuple[int, ...] | None = None,
    inflight: int = 32,
    scale: float = 1.0,
) -> dict[str, Scenario]:
    """Every scenario, keyed by its letter; ``quick`` shrinks counts and windows for CI.

    ``idle_window`` (seconds) and ``agent_counts`` replace (f)'s defaults; ``inflight`` is
    the number of sends in flight, in all, of the second run of (c) and (d) (the first has
    one per sender, as the reference sends); ``scale`` multiplies the measured counts of
    the floor and of (a)-(d) (for quicker A/B runs).
    """
    q = quick

    def k(count: int) -> int:
        return max(10, round(count * scale))

    settle = 0.2 if q else 1.0  # seconds for acks to settle after a warm-up or connect phase
    rr = Job(
        "request-reply",
        "request_reply",
        {"n": k(50 if q else 2000), "warmup": 20 if q else 200, "concurrency": 1, "settle": settle},
        deadline=30 if q else 180,
    )
    rr32 = Job(
        "request-reply-32",
        "request_reply",
        {
            "n": k(200 if q else 5000),
            "warmup": 64 if q else 640,
            "concurrency": 32,
            "settle": settle,
        },
        deadline=30 if q else 180,
    )

    def one_way_jobs(name: str, senders: int, per_sender: int, warmup: int) -> tuple[Job, Job]:
        """The job at one send in flight per sender, and at ``inflight`` in all."""
        params = {"senders": senders, "per_sender": per_sender, "warmup": warmup}
        params["settle"] = settle
        one = Job(f"{name}-1", "one_way", {**params, "inflight_per_sender": 1}, 60 if q else 300)
        many = Job(f"{name}-{inflight}", "one_way", params, deadline=30 if q else 240)
        return one, many

    oneway1, oneway = one_way_jobs("oneway", 1, k(300 if q else 10_000), 30 if q else 500)
    fanin1, fanin = one_way_jobs("fan-in", 8, k(40 if q else 2000), 5 if q else 50)
    floor = Job(
        "floor",
        "floor",
        {
            "warmup": 20 if q else 200,
            "rtt_n": k(100 if q else 2000),
            "pipelined_n": k(500 if q else 20_000),
            "pipeline_window": 32,
            "fsync_n": 20 if q else 200,
        },
        deadline=60 if q else 180,
        needs_server=False,
    )
    counts = agent_counts or ((100,) if q else (1000, 5000, 10_000))
    if idle_window is None:
        idle_window = 1.0 if q else 10.0
    idle = tuple(
        Job(
            f"idle-{k}",
            "idle",
            {"agents": k, "idle_window": idle_window, "connect_concurrency": 64, "settle": settle},
            deadline=45 + k * 0.04 + idle_window,
        )
        for k in counts
    )
    dlp = Job(
        "dlp",
        "dlp_scan",
        {"iterations": 200 if q else 5000, "warmup": 20 if q else 200},
        deadline=30 if q else 120,
        needs_server=False,
    )
    f_metrics: list[tuple[str, Metric]] = []
    for job, k in zip(idle, counts, strict=True):
        ref = k == 1000  # the reference was measured at 1,000 agents only
        f_metrics += [
            (job.name, Metric("connect_time", f"f {k} agents: connect all", "s")),
            (
                job.name,
                Metric(
                    "server_rss",
                    f"f {k} agents: server RSS",
                    "MiB",
                    173.0 if ref else None,
                    1 / MIB,
                ),
            ),
            (
                job.name,
                Metric(
                    "server_cpu_idle",
                    f"f {k} agents: server CPU idle",
                    "% core",
                    7.9 if ref else None,
                ),
            ),
            (
                job.name,
                Metric(
                    "store_connections",
                    f"f {k} agents: store connections",
                    "conns",
                    1003.0 if ref else None,
                    stores=("redis",),
                    elsewhere="n/a (counted for redis only)",
                ),
            ),
            (
                job.name,
                Metric(
                    "server_cpu_per_connect",
                    f"f {k} agents: server CPU/connect",
                    "ms",
                    None,
                    1000.0,
                ),
            ),
            *_rss(job.name, f"f {k} agents"),
        ]
    scenarios = [
        Scenario(
            "0",
            "the floor: purerpc echo over mTLS between two processes, and fsync",
            (floor,),
            (
                (floor.name, Metric("echo_rtt", "0 floor: echo round trip", "us", None, 1e6)),
                (
                    floor.name,
                    Metric("echo_rtt_p99", "0 floor: echo round trip p99", "us", None, 1e6),
                ),
                (floor.name, Metric("echo_pipelined", "0 floor: echo pipelined (32)", "frames/s")),
                (
                    floor.name,
                    Metric("echo_server_cpu", "0 floor: echo server CPU/RTT", "us", None, 1e6),
                ),
                (
                    floor.name,
                    Metric("echo_client_cpu", "0 floor: echo client CPU/RTT", "us", None, 1e6),
                ),
                (floor.name, Metric("fsync", "0 floor: fdatasync 4 KiB", "us", None, 1e6)),
            ),
            stores=(),
        ),
        Scenario(
            "a",
            "request/reply, one requester awaiting each reply",
            (rr,),
            (
                (rr.name, Metric("throughput", "a request/reply 1 outstanding", "req/s", 202.0)),
                (rr.name, Metric("p50", "a latency p50", "ms", 4.9, 1000.0)),
                (rr.name, Metric("p99", "a latency p99", "ms", 5.8, 1000.0)),
                (rr.name, Metric("server_cpu_per_req", "a server CPU/req", "ms", scale=1000.0)),
                (rr.name, Metric("agents_cpu_per_req", "a agents CPU/req", "ms", scale=1000.0)),
                (
                    rr.name,
                    Metric(
                        "redis_commands", "a redis commands/req", "cmds", 59.0, stores=("redis",)
                    ),
                ),
                (rr.name, Metric("redis_reads", "a redis reads/req", "reads", stores=("redis",))),
                *_rss(rr.name, "a"),
            ),
        ),
        Scenario(
            "b",
            "request/reply, 32 outstanding from one agent",
            (rr32,),
            (
                (rr32.name, Metric("throughput", "b request/reply 32 outstanding", "req/s", 250.0)),
                *_rss(rr32.name, "b"),
            ),
        ),
        Scenario(
            "c",
            "one-way send 1 -> 1, first send to last receive, 1 and N sends in flight",
            (oneway1, oneway),
            (
                (oneway1.name, Metric("throughput", "c one-way, 1 in flight", "msg/s", 355.0)),
                (
                    oneway1.name,
                    Metric("server_cpu_per_msg", "c server CPU/msg, 1 in flight", "ms", None, 1e3),
                ),
                # The reference gains about 1.4x at 32 in flight (PERFORMANCE.md).
                (
                    oneway.name,
                    Metric("throughput", f"c one-way, {inflight} in flight", "msg/s", 497.0),
                ),
                (oneway.name, Metric("agents_cpu_per_msg", "c agents CPU/msg", "ms", scale=1000.0)),
                (
                    oneway.name,
                    Metric(
                        "redis_commands", "c redis commands/msg", "cmds", 28.0, stores=("redis",)
                    ),
                ),
                (
                    oneway.name,
                    Metric("redis_reads", "c redis reads/msg", "reads", stores=("redis",)),
                ),
                *_rss(oneway.name, "c"),
            ),
        ),
        Scenario(
            "d",
            "fan-in, 8 senders -> 1 receiver, 1 in flight per sender and N in all",
            (fanin1, fanin),
            (
                (
                    fanin1.name,
                    Metric("throughput", "d fan-in 8 -> 1, 1 in flight each", "msg/s", 581.0),
                ),
                (
                    fanin.name,
                    Metric("throughput", f"d fan-in 8 -> 1, {inflight} in flight", "msg/s"),
                ),
                (fanin.name, Metric("server_cpu_per_msg", "d server CPU/msg", "ms", scale=1000.0)),
                (fanin.name, Metric("agents_cpu_per_msg", "d agents CPU/msg", "ms", scale=1000.0)),
                *_rss(fanin.name, "d"),
            ),
        ),
        Scenario(
            "e",
            "server CPU per one-way message (during c)",
            (oneway,),
            ((oneway.name, Metric("server_cpu_per_msg", "e server CPU/msg", "ms", 2.27, 1000.0)),),
        ),
        Scenario("f", "idle connected agents", idle, tuple(f_metrics)),
        Scenario(
            "g",
            "DLP scan of a 2 KB payload",
            (dlp,),
            ((dlp.name, Metric("scan_time", "g DLP scan 2 KB", "ms", 0.33, 1000.0)),),
            stores=(),
        ),
        Scenario(
            "h",
            "store growth: Redis memory kept per message, after acks, with the audit chain"
            " trimmed to 1,000 records (during c)",
            (oneway,),
            (
                (
                    oneway.name,
                    Metric("redis_bytes_per_msg", "h redis memory kept/msg", "B", 1536.0),
                ),
            ),
            stores=("redis",),
            note="n/a in this build (measured for the redis store only)",
        ),
    ]
    return {s.key: s for s in scenarios}


ALL_KEYS: Final = "0abcdefgh"
