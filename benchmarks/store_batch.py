"""Store batches against single calls: ``python -m benchmarks.store_batch [options]``.

Per backend (memory, sqlite, redis), times routing ``--messages`` messages with
their audit drafts one ``enqueue_many`` call per message (sequentially) against
``enqueue_many`` in batches of ``--batch``; the same for requests (items with their
correlation); and acking as many deliveries one ``ack_many`` call per delivery
against ``ack_many`` in batches. Messages
and drafts are built as the router builds them. Each figure is the median of
``--runs`` runs, each on a fresh store (a new SQLite file in a temporary
directory; a new namespace on a ``redis-server`` started for the purpose).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final, TypeVar

import trio

from mas.audit.record import AuditDraft, payload_digest
from mas.envelope import (
    Envelope,
    Meta,
    encode_data,
    encode_envelope,
    new_correlation_id,
    new_message_id,
)
from mas.store import Correlation, EnqueueItem, QueuedMessage, Store, StoreLimits

from .deploy import redis_server

BACKENDS: Final = ("memory", "sqlite", "redis")
TARGETS: Final = 8  # agents the messages go to (one shared queue each)
LIMITS: Final = StoreLimits(max_queue_length=1_000_000)  # never full here

T = TypeVar("T")


def routed(n: int, *, request: bool) -> EnqueueItem:
    """Message ``n`` as ``Router`` would route it (``mas/server/router.py``)."""
    now = time.time()
    target = f"agent{n % TARGETS}"
    correlation_id = new_correlation_id() if request else None
    data = {"order": n, "items": ["widget", "gadget"], "note": "benchmark payload"}
    envelope = Envelope(
        message_id=new_message_id(),
        sender_id="sender",
        target_id=target,
        message_type="order.created",
        data=data,
        meta=Meta(
            correlation_id=correlation_id,
            expects_reply=request,
            sender_instance_id="sender-1",
        ),
        timestamp=now,
    )
    draft = AuditDraft(
        time=now,
        decision="ALLOWED",
        sender_id="sender",
        sender_instance_id="sender-1",
        target_id=target,
        message_type="order.created",
        latency_ms=0.05,
        message_id=envelope.message_id,
        correlation_id=correlation_id or "",
        payload_sha256=payload_digest(encode_data(data)),
    )
    message = QueuedMessage(
        message_id=envelope.message_id,
        target_id=target,
        instance_id=None,
        envelope_json=encode_envelope(envelope),
        enqueued_at=now,
    )
    correlation = None
    if correlation_id is not None:
        correlation = Correlation(
            correlation_id=correlation_id,
            requester_id="sender",
            requester_instance_id="sender-1",
            target_id=target,
            request_message_id=envelope.message_id,
            expires_at=now + 60,
        )
    return EnqueueItem(message=message, audit=draft, correlation=correlation)


def chunks(items: Sequence[T], size: int) -> list[Sequence[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


async def timed(step: Callable[[], Awaitable[None]]) -> float:
    start = time.perf_counter()
    await step()
    return time.perf_counter() - start


async def one_run(store: Store, messages: int, batch: int, request: bool) -> dict[str, float]:
    """Seconds per phase: enqueue single/batch, then ack single/batch."""
    single = [routed(n, request=request) for n in range(messages)]
    batched = [routed(n, request=request) for n in range(messages)]

    async def enqueue_single() -> None:
        for item in single:
            await store.enqueue_many([item])

    async def enqueue_batched() -> None:
        for part in chunks(batched, batch):
            await store.enqueue_many(part)

    seconds = {"enqueue": await timed(enqueue_single)}
    seconds["enqueue_many"] = await timed(enqueue_batched)
    if request:
        return seconds
    deliveries = []
    for t in range(TARGETS):
        deliveries += await store.claim(f"agent{t}", "i1", "s1", 2 * messages, time.time())
    assert len(deliveries) == 2 * messages, len(deliveries)
    first, second = deliveries[:messages], deliveries[messages:]

    async def ack_single() -> None:
        for delivery in first:
            await store.ack_many([delivery.delivery_id])

    async def ack_batched() -> None:
        for part in chunks(second, batch):
            await store.ack_many([d.delivery_id for d in part])

    seconds["ack"] = await timed(ack_single)
    seconds["ack_many"] = await timed(ack_batched)
    return seconds


@asynccontextmanager
async def open_backend(backend: str, directory: Path, url: str, run: int) -> AsyncIterator[Store]:
    if backend == "memory":
        from mas.store import MemoryStore

        yield MemoryStore(LIMITS)
    elif backend == "sqlite":
        from mas.store.sqlite import open_sqlite_store

        async with open_sqlite_store(directory / f"run{run}.sqlite3", LIMITS) as store:
            yield store
    else:
        from mas.store.redis import open_redis_store

        async with open_redis_store(url, LIMITS, namespace=f"bench{run}") as redis_store:
            yield redis_store


async def measure(args: argparse.Namespace, directory: Path, url: str) -> None:
    print(
        f"{args.messages} messages with audit drafts; batches of {args.batch}; "
        f"median of {args.runs} runs (messages/s)"
    )
    header = f"{'backend':8} {'operation':50} {'single':>10} {'batched':>10} {'ratio':>7}"
    print(header)
    print("-" * len(header))
    run = 0
    for backend in args.backends:
        for request in (False, True):
            results: dict[str, list[float]] = {}
            for _ in range(args.runs):
                run += 1
                async with open_backend(backend, directory, url, run) as store:
                    seconds = await one_run(store, args.messages, args.batch, request)
                for phase, spent in seconds.items():
                    results.setdefault(phase, []).append(args.messages / spent)
            rate = {phase: statistics.median(r) for phase, r in results.items()}
            rows = [("enqueue", "enqueue_many")] + ([] if request else [("ack", "ack_many")])
            for single, batched in rows:
                what = {
                    "enqueue": "send: enqueue_many of 1 vs of --batch",
                    "ack": "ack_many of 1 vs of --batch",
                }[single]
                if request:
                    what = "request: enqueue_many of 1 vs of --batch"
                print(
                    f"{backend:8} {what:50} {rate[single]:10,.0f} {rate[batched]:10,.0f} "
                    f"{rate[batched] / rate[single]:6.1f}x"
                )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.store_batch", description=__doc__)
    parser.add_argument("--messages", type=int, default=5_000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mas-store-batch-") as tmp:
        directory = Path(tmp)
        if "redis" in args.backends:
            with redis_server(directory) as url:
                trio.run(measure, args, directory, url)
        else:
            trio.run(measure, args, directory, "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
