"""The status snapshot: the server's counters plus what the store says now.

``StatusReader.snapshot`` is what ``mas status``, ``mas top`` and ``/metrics`` read.
The store is asked, under a deadline, for each listed agent's queue depth and for
the dead letters (re-read only when this server dead-lettered or replayed one, or
every ``DEAD_LETTER_INTERVAL`` seconds: the store hands them out whole); a store
that does not answer in time makes a snapshot that says so (``store.reachable``
false, depths unknown) instead of a reader that hangs. One
snapshot serves every reader for ``MIN_INTERVAL`` seconds, so readers polling fast
cannot turn into store load.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from typing import TYPE_CHECKING, Final

import trio

from .._version import __version__
from ..control.protocol import (
    AgentRow,
    BreakerRow,
    LatencyHistogram,
    RefusalCount,
    StatusSnapshot,
    StoreHealth,
)
from ..errors import MasError
from .metrics import AgentCounters

if TYPE_CHECKING:
    from .app import MasServer

log = logging.getLogger("mas.server.snapshot")

MIN_INTERVAL: Final = 0.5  # seconds one snapshot is served to every reader
STORE_TIMEOUT: Final = 3.0  # seconds the store has to answer a snapshot's questions
# Seconds the dead-letter counts are reused while this server dead-lettered and replayed
# nothing: the store hands dead letters out whole, so counting them reads every one.
DEAD_LETTER_INTERVAL: Final = 10.0


class StatusReader:
    """Builds snapshots of ``server`` (at most one per ``MIN_INTERVAL``)."""

    def __init__(
        self, server: MasServer, *, config_path: str, store_where: str, metrics_address: str = ""
    ) -> None:
        self._server = server
        self._config_path = config_path
        self._store_where = store_where
        self.metrics_address = metrics_address
        self._lock = trio.Lock()
        self._last: StatusSnapshot | None = None
        self._last_at = -float("inf")
        self._dead: Counter[str] | None = None
        self._dead_key: tuple[int, int] = (-1, -1)
        self._dead_at = -float("inf")

    async def snapshot(self) -> StatusSnapshot:
        """A snapshot at most ``MIN_INTERVAL`` seconds old."""
        async with self._lock:
            if trio.current_time() - self._last_at >= MIN_INTERVAL or self._last is None:
                self._last = await self._build()
                self._last_at = trio.current_time()
            return self._last

    async def store_reachable(self) -> str:
        """'' when the store answers a read within ``STORE_TIMEOUT``, else why not."""
        try:
            with trio.fail_after(STORE_TIMEOUT):
                await self._server.store.next_due()
        except trio.TooSlowError:
            return f"no answer within {STORE_TIMEOUT:g} s"
        except MasError as exc:
            return str(exc) or type(exc).__name__
        return ""

    async def _dead_letters(self) -> Counter[str]:
        """Dead letters per agent, re-read when this server changed them or they are old."""
        decisions = self._server.metrics.decisions
        key = (decisions["DLQ"], decisions["DLQ_REPLAYED"])
        now = trio.current_time()
        if (
            self._dead is None
            or key != self._dead_key
            or now - self._dead_at >= (DEAD_LETTER_INTERVAL)
        ):
            letters = await self._server.store.dead_letters(None)
            self._dead = Counter(d.message.target_id for d in letters)
            self._dead_key, self._dead_at = key, now
        return self._dead

    async def _build(self) -> StatusSnapshot:
        server = self._server
        config = server.config
        metrics = server.metrics
        store = server.store
        sessions = server.registry.all()
        connected: Counter[str] = Counter()
        in_flight: Counter[str] = Counter()
        retrying: Counter[str] = Counter()
        for session in sessions:
            connected[session.agent_id] += 1
            in_flight[session.agent_id] += len(session.window)
            retrying[session.agent_id] += session.window.retrying()
        specs = {spec.agent_id: spec for spec in config.agents}
        ids = sorted(set(specs) | set(connected))
        depths: dict[str, int] = {}
        dead: Counter[str] | None = None
        error = ""
        try:
            with trio.fail_after(STORE_TIMEOUT):
                for agent_id in ids:
                    depths[agent_id] = await store.queue_depth(agent_id)
                dead = await self._dead_letters()
        except trio.TooSlowError:
            error = f"no answer within {STORE_TIMEOUT:g} s"
        except MasError as exc:
            error = str(exc) or type(exc).__name__
        rows = []
        for agent_id in ids:
            counters = metrics.agents.get(agent_id) or AgentCounters()
            spec = specs.get(agent_id)
            rows.append(
                AgentRow(
                    agent_id=agent_id,
                    configured=spec is not None,
                    instances=spec.instances if spec is not None else 0,
                    connected=connected[agent_id],
                    queue_depth=depths.get(agent_id),
                    in_flight=in_flight[agent_id],
                    retrying=retrying[agent_id],
                    dead_letters=None if dead is None else dead[agent_id],
                    sent=counters.sent,
                    refused=counters.refused,
                    delivered=counters.delivered,
                    nacked=counters.nacked,
                    dead_lettered=counters.dead_lettered,
                    expired=counters.expired,
                    last_activity=counters.last_activity or None,
                )
            )
        now = server.wall_clock()
        breakers = [
            BreakerRow(target_id=target, state=state.state, opened_at=state.opened_at)
            for target, state in server.gateway.breakers.items()
            if state.state != "closed"
        ]
        address = server.address
        listen = "" if address is None else _format_addr(address.host, address.port)
        latency = metrics.latency
        return StatusSnapshot(
            server_id=store.server_id,
            version=__version__,
            pid=os.getpid(),
            config_path=self._config_path,
            time=now,
            started_at=metrics.started_at,
            listen=listen,
            store=StoreHealth(
                backend=config.store.backend,
                where=self._store_where,
                reachable=not error,
                error=error,
            ),
            sessions=len(sessions),
            connections=server.statistics()["connections"],
            agents=rows,
            decisions={k: v for k, v in metrics.decisions.items() if v},
            decisions_last_minute=metrics.last_minute(now),
            refusals=[
                RefusalCount(decision=decision, reason=reason, count=count)
                for (decision, reason), count in sorted(metrics.refusals.items())
            ],
            latency=LatencyHistogram(
                bounds=list(latency.bounds),
                counts=list(latency.counts),
                sum=latency.sum,
                count=latency.count,
            ),
            breakers=breakers,
            metrics_address=self.metrics_address,
        )


def _format_addr(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
