"""CPU per request/reply with server and agents in one process: ``python -m
benchmarks.inprocess_rr [--store memory|sqlite] [--compare-late-results]``.

A server and two SDK agents (an echo and a requester, over loopback mTLS) share one Trio
run, so one number holds all of a request/reply's CPU (server and both agents, every
thread) without a second process's scheduling in it: on a noisy machine it separates a
change of a few per cent that throughput runs cannot. Each trial connects fresh agents,
warms up, and times ``--requests`` requests, one at a time or ``--concurrency`` outstanding;
the median of ``--trials``.

``--compare-late-results`` alternates trials with the SDK announcing ``late_results``
and not (its Hello with the flag removed), to measure what a Result riding with its
reply saves.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import types
from pathlib import Path
from typing import Any

import trio

import mas.agent.client as sdk_client
from mas import Agent, AgentMessage
from mas._proto import runtime_pb2
from mas.testing import TestPKI, make_config, open_test_server

WARMUP = 30


class Echo(Agent[dict[str, Any]]):
    @Agent.on("ping")
    async def on_ping(self, message: AgentMessage) -> None:
        await message.reply("pong", message.data)


class Asker(Agent[dict[str, Any]]):
    pass


class _Announce:
    """The SDK's protobuf module, with ``late_results`` left out of its Hello when off."""

    late_results = True

    def __init__(self) -> None:
        self.module = types.SimpleNamespace(**{**vars(runtime_pb2), "Hello": self._hello})

    def _hello(self, **fields: Any) -> Any:
        if not self.late_results:
            fields.pop("late_results", None)
        return runtime_pb2.Hello(**fields)


async def _trial(
    pki: TestPKI, address: str, requests: int, concurrency: int
) -> tuple[float, float]:
    """CPU and wall microseconds per request/reply."""
    echo = Echo("echo", server_addr=address, tls=pki.client_ssl_context("echo"))
    asker = Asker("asker", server_addr=address, tls=pki.client_ssl_context("asker"))

    async def worker(count: int) -> None:
        for i in range(count):
            await asker.request("echo", "ping", {"i": i}, timeout=30)

    async with echo, asker:
        await worker(WARMUP)
        cpu, wall = time.process_time(), time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(worker, requests // concurrency)
        done = requests // concurrency * concurrency
        return (
            (time.process_time() - cpu) / done * 1e6,
            (time.perf_counter() - wall) / done * 1e6,
        )


async def _run(args: argparse.Namespace, announce: _Announce, directory: Path) -> None:
    rules = [{"type": "allow", "sender": "asker", "targets": ["echo"]}]
    sections: dict[str, Any] = {
        "gateway": {"rate_limit": {"per_minute": 10**9, "per_hour": 10**9}},
    }
    if args.store == "sqlite":
        sections["store"] = {"backend": "sqlite", "path": str(directory / "mas.db")}
    config = make_config(["asker", "echo"], rules, **sections)
    settings = [True, False] if args.compare_late_results else [True]
    results: dict[bool, list[tuple[float, float]]] = {s: [] for s in settings}
    pki = TestPKI()
    async with open_test_server(config, pki) as server:
        assert server.address is not None
        address = f"127.0.0.1:{server.address.port}"
        for trial in range(args.trials):
            order = settings if trial % 2 == 0 else settings[::-1]
            for setting in order:
                announce.late_results = setting
                trial_result = await _trial(pki, address, args.requests, args.concurrency)
                results[setting].append(trial_result)
    for setting, runs in results.items():
        cpu = statistics.median(r[0] for r in runs)
        wall = statistics.median(r[1] for r in runs)
        label = f"late_results={'on' if setting else 'off'}" if len(settings) > 1 else "sdk"
        print(f"{args.store} {label}: {cpu:.0f} us CPU, {wall:.0f} us wall per request/reply")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--store", choices=("memory", "sqlite"), default="memory")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=1, help="requests outstanding")
    parser.add_argument("--compare-late-results", action="store_true")
    args = parser.parse_args()
    announce = _Announce()
    sdk_client.pb = announce.module  # type: ignore[assignment]
    with tempfile.TemporaryDirectory() as directory:
        trio.run(_run, args, announce, Path(directory))


if __name__ == "__main__":
    main()
