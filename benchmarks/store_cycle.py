"""The store's own CPU per message: ``python -m benchmarks.store_cycle [options]``.

Runs the store calls one message makes through a server, in process and without a
network, with its target's session idle (so its enqueue claims for it, as the server's
hand-over does): a one-way message (``route_batch`` of one item claiming for the
receiver, durable; the receiver's ``ack_recorded`` with the DELIVERED record), and a
request/reply (the request's ``route_batch`` with its correlation and the replier's
claim, the reply's ``route_batch`` that acks the request and claims for the sender, the
reply's ack): three store calls, as on a server. With ``--senders N``, N tasks run
one-way cycles at once, as N sessions of one server sending to one receiver would.
Prints the process CPU time (user + system, every thread: the WAL flushes too) and
the wall time per message, median of ``--runs`` runs, each on a fresh store (a new
SQLite file in a temporary directory). Compare two checkouts by running each in turn
(``cd`` there first, so that it imports its own code).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final

import msgspec
import trio

from mas.audit.record import AuditDraft
from mas.store import InFlight, Store, StoreLimits
from mas.store.base import Claim

from .store_batch import routed

LIMITS: Final = StoreLimits(max_queue_length=1_000_000)
WARMUP: Final = 200


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _delivered(delivery: InFlight) -> AuditDraft:
    message = delivery.message
    return AuditDraft(
        time=time.time(),
        decision="DELIVERED",
        message_id=message.message_id,
        target_id=message.target_id,
        sender_instance_id="receiver-1",
        latency_ms=0.1,
    )


def _idle(target: str, instance: str, limit: int = 8) -> Claim:
    """The claim a server makes for a target's idle session with its enqueue."""
    return Claim(agent_id=target, instance_id=instance, session_id=f"s-{target}", limit=limit)


async def one_way(store: Store, n: int) -> None:
    item = routed(n, request=False)
    target = item.message.target_id
    batch = await store.route_batch([item], claims=[_idle(target, "receiver-1")], now=time.time())
    [taken] = batch.claimed
    await store.ack_recorded([d.delivery_id for d in taken], _delivered)


async def request_reply(store: Store, n: int) -> None:
    request = routed(n, request=True)
    target = request.message.target_id
    batch = await store.route_batch([request], claims=[_idle(target, "replier-1")], now=time.time())
    [[delivery]] = batch.claimed
    assert request.correlation is not None
    reply = routed(n, request=False)
    message = msgspec.structs.replace(reply.message, target_id="sender", instance_id="sender-1")
    reply = msgspec.structs.replace(
        reply,
        message=message,
        answers=request.correlation.correlation_id,
        acks=delivery.delivery_id,
    )
    answered = await store.route_batch(
        [reply], acked=_delivered, claims=[_idle("sender", "sender-1")], now=time.time()
    )
    [taken] = answered.claimed
    await store.ack_recorded([d.delivery_id for d in taken], _delivered)


@asynccontextmanager
async def _store(backend: str, directory: Path) -> AsyncIterator[Store]:
    if backend == "memory":
        from mas.store.memory import MemoryStore

        yield MemoryStore(LIMITS)
        return
    from mas.store.sqlite import open_sqlite_store

    sync = "normal" if backend == "sqlite-normal" else "full"
    async with open_sqlite_store(directory / "mas.sqlite3", LIMITS, sync=sync) as store:
        yield store


async def _run(
    backend: str, cycle: Callable[[Store, int], Awaitable[None]], messages: int, senders: int
) -> tuple[float, float]:
    """(CPU seconds, wall seconds) per message, ``senders`` tasks running cycles at once."""

    async def send(first: int, count: int) -> None:
        for n in range(first, first + count):
            await cycle(store, n)

    each = messages // senders
    with tempfile.TemporaryDirectory() as directory:
        async with _store(backend, Path(directory)) as store:
            await send(0, WARMUP)
            cpu, wall = _cpu(), time.perf_counter()
            async with trio.open_nursery() as nursery:
                for k in range(senders):
                    nursery.start_soon(send, WARMUP + k * each, each)
            done = each * senders
            return (_cpu() - cpu) / done, (time.perf_counter() - wall) / done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--backends", default="memory,sqlite,sqlite-normal")
    parser.add_argument(
        "--senders",
        type=int,
        default=1,
        help="tasks running cycles at once, as sessions on one server (one-way only when > 1)",
    )
    args = parser.parse_args()
    cycles = {"one-way": one_way, "request/reply": request_reply}
    if args.senders > 1:  # concurrent claims may take each other's requests
        del cycles["request/reply"]
    print(f"{'cycle':14} {'backend':14} {'CPU us/msg':>10} {'wall us/msg':>11}")
    for name, cycle in cycles.items():
        for backend in args.backends.split(","):
            runs = [
                trio.run(_run, backend, cycle, args.messages, args.senders)
                for _ in range(args.runs)
            ]
            cpu = statistics.median(r[0] for r in runs) * 1e6
            wall = statistics.median(r[1] for r in runs) * 1e6
            print(f"{name:14} {backend:14} {cpu:10.0f} {wall:11.0f}")


if __name__ == "__main__":
    main()
