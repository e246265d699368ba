"""The measured loops, run inside the agents process (see agents.py).

Each workload takes the job's parameters and a ``Setup`` (how to reach the server, the PKI,
the server's pid) and returns a flat dict of figures in base units (seconds, bytes, per
second); scenarios.py says which of them are shown. Every loop is bounded by a count, and the
agents process runs it under one ``trio.fail_after`` (the runner also kills it at the deadline).

Every window is preceded by a warm-up that goes through the same path; a window starts at
the first measured send and ends when the last measured message was received.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import trio

from mas import Agent, AgentMessage, TLSFiles

from .procstat import cpu_seconds, rss_bytes
from .scenarios import PAYLOAD_TEXT

SHUTDOWN_GRACE: Final = 2.0  # seconds an agent gets to drain when the workload ends
REQUEST_TIMEOUT: Final = 30.0  # seconds; far above any healthy round trip


@dataclass(frozen=True)
class Setup:
    server_addr: str
    server_pid: int
    pki_dir: Path
    redis_url: str | None


def roster(workload: str, params: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """The agent ids a workload connects as, and the permission rules it needs (mas.yaml)."""
    if workload == "one_way":
        sources = [f"src{k}" for k in range(params["senders"])]
        rules = [{"type": "allow", "sender": s, "targets": ["sink"]} for s in sources]
        return ["sink", *sources], rules
    if workload == "request_reply":  # a reply is authorized by its request
        return ["echo", "requester"], [
            {"type": "allow", "sender": "requester", "targets": ["echo"]}
        ]
    if workload == "floor":  # the echo client's certificate; it talks to no mas server
        return ["floor"], []
    if workload == "idle":
        return [f"idle{k:05d}" for k in range(params["agents"])], []
    return [], []


def payload(i: int) -> dict[str, Any]:
    return {"i": i, "text": PAYLOAD_TEXT}


def make_agent(cls: type[Agent[Any]], agent_id: str, setup: Setup, **kwargs: Any) -> Agent[Any]:
    """An agent with its own certificate, connecting to the benchmark server."""
    tls = TLSFiles(
        ca_path=str(setup.pki_dir / "ca.pem"),
        cert_path=str(setup.pki_dir / f"{agent_id}.pem"),
        key_path=str(setup.pki_dir / f"{agent_id}.key"),
    )
    return cls(
        agent_id, server_addr=setup.server_addr, tls=tls, shutdown_grace=SHUTDOWN_GRACE, **kwargs
    )


class Tally:
    """Which message ids arrived (duplicates of at-least-once delivery count once)."""

    def __init__(self, total: int) -> None:
        self._seen = bytearray(total)
        self._missing = total
        self._marks: list[tuple[int, trio.Event]] = []
        self.arrived = 0

    def add(self, i: int) -> None:
        if 0 <= i < len(self._seen) and not self._seen[i]:
            self._seen[i] = 1
            self.arrived += 1
            for count, event in self._marks:
                if self.arrived >= count:
                    event.set()

    async def wait_for(self, count: int) -> float:
        """Wait until ``count`` distinct ids arrived; returns ``time.perf_counter()`` then."""
        if self.arrived < count:
            event = trio.Event()
            self._marks.append((count, event))
            await event.wait()
        return time.perf_counter()


class Sink(Agent[dict[str, Any]]):
    """Counts "bench" messages; the SDK acks each after the handler returned."""

    def __init__(self, agent_id: str, *, tally: Tally, **kwargs: Any) -> None:
        super().__init__(agent_id, **kwargs)
        self.tally = tally

    @Agent.on("bench")
    async def on_bench(self, message: AgentMessage) -> None:
        self.tally.add(message.data["i"])


class Echo(Agent[dict[str, Any]]):
    """Answers every "bench" request with its payload."""

    @Agent.on("bench")
    async def on_bench(self, message: AgentMessage) -> None:
        await message.reply("bench_reply", message.data)


class Plain(Agent[dict[str, Any]]):
    """An agent that only sends or idles."""


class RedisProbe:
    """Readings of Redis INFO around a window (only when the store is Redis)."""

    def __init__(self, url: str | None) -> None:
        self.active = bool(url)
        self._client: Any = None
        if url:
            import redis

            self._client = redis.Redis.from_url(url)

    def reading(self) -> dict[str, int]:
        if self._client is None:
            return {}
        info = self._client.info("all")
        return {
            key: int(info.get(key, 0))
            for key in ("used_memory", "total_commands_processed", "total_reads_processed")
        }

    def clients(self) -> int | None:
        """Clients connected to Redis, not counting this probe."""
        return None if self._client is None else len(self._client.client_list()) - 1

    def per_message(self, before: dict[str, int], after: dict[str, int], n: int) -> dict[str, Any]:
        if not before:
            return {}
        return {
            "redis_bytes_per_msg": (after["used_memory"] - before["used_memory"]) / n,
            # INFO itself is one command and one read per reading.
            "redis_commands": (
                after["total_commands_processed"] - before["total_commands_processed"] - 1
            )
            / n,
            "redis_reads": (after["total_reads_processed"] - before["total_reads_processed"] - 1)
            / n,
        }


async def pump(sender: Agent[Any], target: str, ids: Iterator[int], concurrency: int) -> None:
    """Send ``ids`` to ``target`` with ``concurrency`` sends awaiting the server's accept."""

    async def worker() -> None:
        for i in ids:  # one shared iterator: each id is sent once
            await sender.send(target, "bench", payload(i))

    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)


async def one_way(setup: Setup, params: dict[str, Any]) -> dict[str, Any]:
    """(c), (d), (e), (h): ``senders`` agents each send ``per_sender`` messages to one sink."""
    senders, per_sender, warmup = params["senders"], params["per_sender"], params["warmup"]
    # One per sender (as the reference sends), or the same total in flight for c and d.
    inflight = params.get("inflight_per_sender") or max(1, params["inflight"] // senders)
    n, warm_total = senders * per_sender, senders * warmup
    tally = Tally(warm_total + n)
    probe = RedisProbe(setup.redis_url)
    sink = make_agent(Sink, "sink", setup, tally=tally)
    sources = [make_agent(Plain, f"src{k}", setup) for k in range(senders)]
    async with sink, contextlib.AsyncExitStack() as stack:
        for source in sources:
            await stack.enter_async_context(source)
        async with trio.open_nursery() as nursery:
            for k, source in enumerate(sources):
                ids = iter(range(k * warmup, (k + 1) * warmup))
                nursery.start_soon(pump, source, "sink", ids, inflight)
        await tally.wait_for(warm_total)
        await trio.sleep(params["settle"])
        redis_before = probe.reading()
        cpu0, start = cpu_seconds(setup.server_pid), time.perf_counter()
        own0 = time.process_time()
        async with trio.open_nursery() as nursery:
            for k, source in enumerate(sources):
                first = warm_total + k * per_sender
                ids = iter(range(first, first + per_sender))
                nursery.start_soon(pump, source, "sink", ids, inflight)
            end = await tally.wait_for(warm_total + n)
        cpu1, own1 = cpu_seconds(setup.server_pid), time.process_time()
        if probe.active:  # let the acks reach Redis before reading its memory
            await trio.sleep(params["settle"])
        redis_after = probe.reading()
    return {
        "messages": n,
        "inflight_per_sender": inflight,
        "elapsed": end - start,
        "throughput": n / (end - start),
        "server_cpu_per_msg": (cpu1 - cpu0) / n,
        "agents_cpu_per_msg": (own1 - own0) / n,
        **probe.per_message(redis_before, redis_after, n),
    }


async def request_reply(setup: Setup, params: dict[str, Any]) -> dict[str, Any]:
    """(a), (b): one requester keeps ``concurrency`` requests outstanding to one echo agent."""
    n, warmup, concurrency = params["n"], params["warmup"], params["concurrency"]
    probe = RedisProbe(setup.redis_url)
    latencies: list[float] = []

    async def requests(agent: Agent[Any], count: int, record: bool) -> None:
        remaining = iter(range(count))

        async def worker() -> None:
            for i in remaining:
                start = time.perf_counter()
                await agent.request("echo", "bench", payload(i), timeout=REQUEST_TIMEOUT)
                if record:
                    latencies.append(time.perf_counter() - start)

        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(worker)

    echo = make_agent(Echo, "echo", setup)
    requester = make_agent(Plain, "requester", setup)
    async with echo, requester:
        await requests(requester, warmup, record=False)
        await trio.sleep(params["settle"])
        redis_before = probe.reading()
        cpu0, own0 = cpu_seconds(setup.server_pid), time.process_time()
        start = time.perf_counter()
        await requests(requester, n, record=True)
        end = time.perf_counter()
        cpu1, own1 = cpu_seconds(setup.server_pid), time.process_time()
        if probe.active:
            await trio.sleep(params["settle"])
        redis_after = probe.reading()
    quantiles = statistics.quantiles(latencies, n=100, method="inclusive")
    return {
        "requests": n,
        "elapsed": end - start,
        "throughput": n / (end - start),
        "p50": statistics.median(latencies),
        "p99": quantiles[98],
        "server_cpu_per_req": (cpu1 - cpu0) / n,
        "agents_cpu_per_req": (own1 - own0) / n,
        **probe.per_message(redis_before, redis_after, n),
    }


async def idle(setup: Setup, params: dict[str, Any]) -> dict[str, Any]:
    """(f): connect ``agents`` agents (bounded concurrency), then watch the idle server."""
    count, window = params["agents"], params["idle_window"]
    limiter = trio.CapacityLimiter(params["connect_concurrency"])
    probe = RedisProbe(setup.redis_url)
    agents = [make_agent(Plain, f"idle{k:05d}", setup) for k in range(count)]

    async def connect(nursery: trio.Nursery, agent: Agent[Any]) -> None:
        async with limiter:
            await nursery.start(agent.run)

    async with trio.open_nursery() as running:
        cpu_start, start = cpu_seconds(setup.server_pid), time.perf_counter()
        async with trio.open_nursery() as connecting:
            for agent in agents:
                connecting.start_soon(connect, running, agent)
        connect_time = time.perf_counter() - start
        connect_cpu = cpu_seconds(setup.server_pid) - cpu_start
        await trio.sleep(params["settle"])
        cpu0, t0 = cpu_seconds(setup.server_pid), time.perf_counter()
        await trio.sleep(window)
        cpu1, t1 = cpu_seconds(setup.server_pid), time.perf_counter()
        result = {
            "agents": count,
            "connect_time": connect_time,
            "server_cpu_per_connect": connect_cpu / count,
            "server_rss": rss_bytes(setup.server_pid),
            "server_cpu_idle": 100.0 * (cpu1 - cpu0) / (t1 - t0),
            "store_connections": probe.clients(),
        }
        running.cancel_scope.cancel()
    return result
