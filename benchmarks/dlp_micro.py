"""Micro-benchmark of the DLP scanner (PERFORMANCE.md scenario g).

Run: ``python benchmarks/dlp_micro.py [--repeat N] [--number N] [--clock NAME]``. Prints the
median, min and max time of one ``DlpScanner.scan`` call, in microseconds, for each payload
below, with the default rules, and how often one scan reads the scanner's budget clock.
The scanner's clock is ``time.thread_time`` by default, as in the gateway (a real system call),
or ``--clock perf_counter`` (the scanner's own default). Timings are taken in batches
(``time.perf_counter`` around ``number`` calls, divided), after a warm-up, so the timer's own
cost is spread out. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import msgspec

from mas.config import DlpConfig
from mas.policy.dlp import DlpScanner

BENCH_PAYLOAD: dict[str, Any] = {
    "i": 1,
    "text": "benchmark payload: the quick brown fox jumps over the lazy dog",
}


def realistic_payload() -> dict[str, Any]:
    """A clean agent message of about 2 KB of JSON: nested dicts, lists, prose, ids, dates."""
    return {
        "message_id": "3f2a9c1e-7b4d-4e8a-9c2f-1a2b3c4d5e6f",
        "conversation": {
            "id": "conv-20240115-0042",
            "turn": 7,
            "participants": ["planner", "researcher", "critic"],
        },
        "task": {
            "title": "Summarise quarterly shipping delays",
            "priority": "high",
            "deadline": "2024-02-01T17:00:00Z",
            "tags": ["logistics", "q4", "report"],
        },
        "context": [
            {
                "role": "user",
                "content": (
                    "Please look at the delivery reports for October to December and tell me "
                    "which carriers missed their windows most often, and by how much. Keep it "
                    "short; the board meets on Thursday at 10:30."
                ),
            },
            {
                "role": "assistant",
                "content": (
                    "Three carriers account for most late deliveries. Northwind missed 14% of "
                    "windows (median delay 26 hours), Contoso 9% (11 hours) and Fabrikam 6% "
                    "(4 hours). Most delays cluster in the week before the holidays."
                ),
            },
        ],
        "items": [
            {"sku": "BK-1042", "qty": 3, "price": 12.5, "warehouse": "east", "backorder": False},
            {"sku": "BK-2210", "qty": 1, "price": 48.0, "warehouse": "west", "backorder": True},
            {"sku": "TL-0007", "qty": 12, "price": 3.25, "warehouse": "east", "backorder": False},
            {"sku": "PK-3318", "qty": 40, "price": 0.75, "warehouse": "north", "backorder": False},
        ],
        "plan": [
            {"step": 1, "agent": "researcher", "action": "collect carrier reports for Q4"},
            {"step": 2, "agent": "researcher", "action": "compute late-delivery rates per carrier"},
            {"step": 3, "agent": "critic", "action": "check the numbers against last year"},
            {"step": 4, "agent": "planner", "action": "draft the summary for the board"},
        ],
        "metrics": {"tokens_in": 812, "tokens_out": 233, "latency_ms": 41.7, "cost_usd": 0.0031},
        "notes": (
            "Escalate to the operations lead if the Northwind rate stays above 10% in January. "
            "Attach the carrier scorecard (version 3.2) and the regional breakdown. Data were "
            "refreshed at 2024-01-15 08:00 UTC from the warehouse exports."
        ),
        "summary": (
            "Late deliveries rose from 5.1% to 8.4% quarter on quarter. The increase is almost "
            "entirely due to one carrier changing its regional hub in November; the other two "
            "carriers stayed within their contracted service levels. Recommend a review call."
        ),
        "reply_to": "planner",
        "ttl_s": 300,
        "trace": {"span": "a1b2c3d4e5f60718", "parent": None, "sampled": True},
    }


def large_payload(strings: int = 512, chars: int = 512) -> dict[str, Any]:
    """A clean payload of ``strings`` prose strings of ``chars`` characters each (256 KB)."""
    prose = "the quick brown fox jumps over the lazy dog, " * (chars // 45 + 1)
    return {"rows": [{"n": i, "text": prose[:chars]} for i in range(strings)]}


CLOCKS: dict[str, Callable[[], float]] = {
    "thread_time": time.thread_time,
    "perf_counter": time.perf_counter,
}


class CountingClock:
    """Wraps a clock and counts its readings."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.clock()


def clock_reads(payload: dict[str, Any], clock: Callable[[], float]) -> int:
    """How many times one scan of ``payload`` reads the scanner's clock."""
    counting = CountingClock(clock)
    DlpScanner.from_config(DlpConfig(), clock=counting).scan(payload)
    return counting.reads


def measure(fn: Callable[[], object], *, number: int, repeat: int) -> list[float]:
    for _ in range(number):
        fn()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        samples.append((time.perf_counter() - start) / number * 1e6)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--number", type=int, default=2000)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="thread_time")
    args = parser.parse_args()
    clock = CLOCKS[args.clock]
    scanner = DlpScanner.from_config(DlpConfig(), clock=clock)
    dirty = realistic_payload()
    dirty["notes"] += " Contact: ops-lead@example.com, 415-555-0123."
    payloads = {
        "PERFORMANCE.md payload": BENCH_PAYLOAD,
        "realistic clean payload": realistic_payload(),
        "same + e-mail and phone (ALERT)": dirty,
        "large clean payload (512 strings)": large_payload(),
    }
    print(f"clock: time.{args.clock}")
    for name, payload in payloads.items():
        size = len(msgspec.json.encode(payload))
        result = scanner.scan(payload)
        number = max(1, args.number * 2048 // max(size, 2048))  # fewer calls for big payloads
        samples = measure(lambda p=payload: scanner.scan(p), number=number, repeat=args.repeat)
        median = statistics.median(samples)
        print(
            f"{name:34} {size:6d} B  {result.decision:9}  median {median:7.1f} us"
            f"  min {min(samples):7.1f}  max {max(samples):7.1f}"
            f"  clock reads {clock_reads(payload, clock)}"
        )


if __name__ == "__main__":
    main()
