"""The hostile-client harness: a measured ``mas serve``, a well-behaved probe, a report.

(The ``hostile_server`` fixture is in conftest.py.)

Every attack runs against a real server process while a well-behaved agent pair does
request/reply (``probe.Probe``); the test then checks the server's RSS, CPU and log
against stated bounds. ``MAS_HOSTILE_SCALE`` (default 1) multiplies each attack's size
for the long forms; ``MAS_HOSTILE_REPORT`` names a file that gets one JSON line per
attack with its measurements.
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

import trio
from hostile_server import ServerProcess, Usage
from probe import Probe

from mas.testing import TestPKI

SCALE = float(os.environ.get("MAS_HOSTILE_SCALE", "1"))


def scaled(count: int) -> int:
    """An attack size, multiplied for the long forms."""
    return max(1, int(count * SCALE))


class AttackReport(NamedTuple):
    """What an attack cost the server, and how the probe fared during it."""

    name: str
    before: Usage
    after: Usage
    peak_rss_kib: int
    round_trips: int
    p99_ms: float
    baseline_p99_ms: float

    @property
    def cpu_seconds(self) -> float:
        return self.after.cpu_seconds - self.before.cpu_seconds

    @property
    def rss_growth_kib(self) -> int:
        return self.peak_rss_kib - self.before.rss_kib

    @property
    def log_lines(self) -> int:
        return self.after.log_lines - self.before.log_lines

    def write(self) -> None:
        line = {
            "attack": self.name,
            "cpu_s": round(self.cpu_seconds, 2),
            "rss_before_kib": self.before.rss_kib,
            "rss_peak_kib": self.peak_rss_kib,
            "rss_growth_kib": self.rss_growth_kib,
            "log_lines": self.log_lines,
            "probe_round_trips": self.round_trips,
            "probe_p99_ms": round(self.p99_ms, 1),
            "probe_p99_without_attack_ms": round(self.baseline_p99_ms, 1),
        }
        print(json.dumps(line))
        report = os.environ.get("MAS_HOSTILE_REPORT")
        if report:
            with open(report, "a") as f:
                f.write(json.dumps(line) + "\n")


def _p99(latencies: list[float]) -> float:
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] if ordered else 0.0


async def _sample_rss(server: ServerProcess, peak: list[int]) -> None:
    while True:
        if server.alive():
            peak[0] = max(peak[0], server.usage().rss_kib)
        await trio.sleep(0.05)


async def under_attack(
    name: str,
    server: ServerProcess,
    pki: TestPKI,
    attack: Callable[[], Awaitable[Any]],
    *,
    after: float = 0.5,
) -> AttackReport:
    """Run ``attack`` while the probe does request/reply; measure the server around it.

    The probe starts first (its first 20 round trips, without attack, are the baseline;
    the server's usage is measured from there), keeps going
    through the attack and for ``after`` seconds past it; any round trip slower than
    ``probe.ROUND_TRIP_TIMEOUT`` fails the test.
    """
    probe = Probe()
    peak = [0]
    async with trio.open_nursery() as nursery:
        await nursery.start(probe.start, server.port, pki)  # 20 round trips: the baseline
        before = server.usage()
        peak[0] = before.rss_kib
        nursery.start_soon(_sample_rss, server, peak)
        probe.attack_started = True
        await attack()
        await trio.sleep(after)
        nursery.cancel_scope.cancel()
    assert server.alive(), server.log()[-20:]
    report = AttackReport(
        name,
        before,
        server.usage(),
        max(peak[0], server.usage().rss_kib),
        len(probe.latencies),
        probe.p99() * 1000,
        _p99(probe.baseline) * 1000,
    )
    report.write()
    assert report.round_trips > 0, "the well-behaved agent got nothing done during the attack"
    return report
