"""``MasServer``: the server's nursery tree (audit, router timers, then the gRPC listener).

::

    MasServer.serve
    ├── audit         AuditLog.run: drafts -> store chain; chain -> JSONL file
    ├── store.watch   wakes sessions for messages other servers enqueued (shared stores)
    ├── router.run    wakes sessions when delayed retries fall due
    ├── sampler       samples the decision counters every second (``mas status``)
    └── GrpcServer    TLS listener -> connections -> RPCs (sessions live here)

``serve`` reports the bound address through ``task_status`` once the listener
accepts connections. ``drain`` ends every session with ``UNAVAILABLE
server_shutting_down`` (clients reconnect elsewhere), waits, bounded, for their
deliveries to be requeued, and flushes the audit queue; cancelling ``serve``
then closes the rest.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

import trio

from .. import telemetry
from ..audit.record import dlq_listed, dlq_replayed
from ..clock import TrioWallClock
from ..config import MasConfig
from ..errors import Reason
from ..store import DeadLetter, Store
from .audit_log import AuditLog
from .gateway import Gateway
from .grpc import BoundAddress, GrpcServer
from .guard import GuardLimits
from .metrics import SAMPLE_INTERVAL, ServerMetrics
from .refusal import Refusal
from .router import Router
from .servicer import RuntimeServicer
from .sessions import SessionRegistry
from .store_timing import timed_store
from .transport import ServerLimits

log = logging.getLogger("mas.server")


class MasServer:
    """The MAS server: identity, policy, routing and sessions over mTLS gRPC."""

    def __init__(self, config: MasConfig, store: Store, ssl_context: ssl.SSLContext) -> None:
        self._config = config
        self._gateway = Gateway(config)
        self.registry = SessionRegistry()
        self._wall_clock: TrioWallClock | None = None  # made in serve (it reads Trio's clock)
        self.metrics = ServerMetrics(config.agent_ids, time.time())
        if config.gateway.telemetry.prometheus.port is not None:
            store = timed_store(store, self.metrics)  # mas_store_operation_seconds
        self.store = store
        self.audit = AuditLog(
            store,
            config.gateway.audit,
            telemetry.from_config(config.gateway.telemetry),
            refusal_interval=config.limits.refusal_audit_interval,
            metrics=self.metrics,
        )
        self._ssl_context = ssl_context
        self._router: Router | None = None
        self._servicer: RuntimeServicer | None = None
        self._grpc: GrpcServer | None = None
        self.address: BoundAddress | None = None

    @property
    def config(self) -> MasConfig:
        return self._config

    @property
    def gateway(self) -> Gateway:
        return self._gateway

    async def serve(
        self, *, task_status: trio.TaskStatus[BoundAddress] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run the server until cancelled; reports the bound address when it accepts."""
        self._wall_clock = TrioWallClock()
        router = self._router = Router(
            self.store,
            self.registry,
            lambda: self._gateway,
            self.audit,
            lambda: self._config.limits,
            TrioWallClock(),
        )
        self._servicer = RuntimeServicer(
            router=router,
            registry=self.registry,
            store=self.store,
            audit=self.audit,
            config=lambda: self._config,
            gateway=lambda: self._gateway,
        )
        self._grpc = GrpcServer(self._servicer, self._ssl_context, server_limits(self._config))
        async with trio.open_nursery() as nursery:
            await nursery.start(self.audit.run)
            await nursery.start(self.store.watch, self.registry.ring)
            await nursery.start(router.run)
            nursery.start_soon(self._sample_decisions)
            self.address = await nursery.start(
                self._grpc.serve, self._config.listen_host, self._config.listen_port
            )
            task_status.started(self.address)

    def reload(self, config: MasConfig) -> None:
        """Apply a new configuration now: every setting that can change while serving.

        Policy, allowlist, revocations, the gateway's settings and the limits apply at
        once (the connection limits to connections opened from now on, the ack timeout
        to deliveries sent from now on); sessions of agents that were removed, or whose
        certificate is now revoked, are ended; rate-limit and breaker state carry over.
        The settings that need a restart (listen address, TLS files, store, audit file,
        telemetry) are named in the log and keep their old values until then.
        """
        needs_restart = restart_only_changes(self._config, config)
        if needs_restart:
            log.warning(
                "reload: %s changed; these apply only after a restart",
                ", ".join(needs_restart),
            )
        self._gateway = self._gateway.reconfigured(config)
        self._config = config
        self.metrics.configure(config.agent_ids)
        if self._grpc is not None:
            self._grpc.reconfigure(server_limits(config))
        for session in self.registry.all():
            session.window.ack_timeout = config.limits.ack_timeout
        revoked_serials = config.revoked.serial_numbers()
        revoked_fingerprints = config.revoked.sha256_fingerprints()
        for session in self.registry.all():
            if session.agent_id not in config.agent_ids:
                reason = Reason.NOT_ALLOWLISTED
            elif (
                session.serial_number in revoked_serials
                or session.fingerprint in revoked_fingerprints
            ):
                reason = Reason.CERTIFICATE_REVOKED
            else:
                continue
            log.warning("ending session %s/%s: %s", session.agent_id, session.instance_id, reason)
            session.end(Refusal(reason))

    async def drain(self, grace_period: float) -> None:
        """End every session (clients may reconnect elsewhere); wait up to ``grace_period``."""
        for session in self.registry.all():
            session.end(Refusal(Reason.SERVER_SHUTTING_DOWN))
        with trio.move_on_after(grace_period):
            await self.registry.wait_empty()
        await self.audit.flush()

    async def _sample_decisions(self) -> None:
        """Sample the decision counters every ``SAMPLE_INTERVAL`` (the "last minute" view)."""
        while True:
            self.metrics.sample(self.wall_clock())
            await trio.sleep(SAMPLE_INTERVAL)

    def wall_clock(self) -> float:
        """The wall time now (Trio's clock mapped to wall time: MockClock in tests)."""
        return time.time() if self._wall_clock is None else self._wall_clock.now()

    async def replay_dead_letters(
        self, message_ids: Sequence[str] | None, operator: str
    ) -> list[DeadLetter]:
        """Put dead letters back in their queues, audited ``DLQ_REPLAYED``; wake their agents."""
        now = self.wall_clock()
        replayed = await self.store.replay_dead_letters(message_ids, now)
        await self.audit.record_many(
            [
                dlq_replayed(
                    now, operator, dead.message.message_id, dead.message.target_id, dead.reason
                )
                for dead in replayed
            ]
        )
        for agent_id in {dead.message.target_id for dead in replayed}:
            self.registry.ring(agent_id)
        return replayed

    async def list_dead_letters(
        self, agent_id: str | None, operator: str, *, audited: bool
    ) -> list[DeadLetter]:
        """The dead letters (of ``agent_id``, or all), oldest first; ``audited``: record the
        listing as ``DLQ_LISTED``, naming the operator (the first page of a listing is)."""
        letters = await self.store.dead_letters(agent_id)
        if audited:
            await self.audit.record(dlq_listed(self.wall_clock(), operator, len(letters), agent_id))
        return letters

    def statistics(self) -> dict[str, Any]:
        """Counters for logs and tests, including decisions and their latency histograms."""
        return {
            "sessions": len(self.registry.all()),
            "connections": self._grpc.active_connections if self._grpc else 0,
            "refused_handshakes": self._grpc.refused_handshakes if self._grpc else 0,
            "refused_identities": self._servicer.refused_identities if self._servicer else 0,
            "delivered": self._router.delivered if self._router else 0,
            "dead_lettered": self._router.dead_lettered if self._router else 0,
            "expired": self._router.expired if self._router else 0,
            "swept": self._router.swept if self._router else 0,
            **self.audit.statistics(),
        }


# Settings a running server cannot change: it keeps the old ones until restarted.
_RESTART_ONLY: Final[tuple[tuple[str, Callable[[MasConfig], object]], ...]] = (
    ("server_listen_addr", lambda c: c.server_listen_addr),
    ("TLS files", lambda c: (c.tls_ca_path, c.tls_server_cert_path, c.tls_server_key_path)),
    ("trust_domain", lambda c: c.trust_domain),
    ("store", lambda c: c.store),
    ("gateway.redis", lambda c: c.gateway.redis),
    ("gateway.audit", lambda c: c.gateway.audit),
    ("gateway.telemetry", lambda c: c.gateway.telemetry),
    ("control_socket", lambda c: c.control_socket),
)


def restart_only_changes(old: MasConfig, new: MasConfig) -> list[str]:
    """The names of the settings that differ between ``old`` and ``new`` but need a restart."""
    return [name for name, read in _RESTART_ONLY if read(old) != read(new)]


def server_limits(config: MasConfig) -> ServerLimits:
    """The listener's limits from ``config.limits``."""
    limits = config.limits
    return ServerLimits(
        max_message_bytes=limits.max_message_bytes,
        max_concurrent_streams=limits.max_concurrent_streams,
        max_connections=limits.max_connections,
        handshake_timeout=limits.handshake_timeout,
        first_message_timeout=limits.hello_timeout,
        write_timeout=limits.write_timeout,
        idle_timeout=limits.idle_timeout,
        max_connections_per_identity=limits.max_connections_per_identity,
        max_connections_per_address=limits.max_connections_per_address,
        max_output_bytes=limits.max_output_bytes,
        guard=GuardLimits(
            streams_per_second=limits.max_streams_per_second,
            pings_per_second=limits.max_pings_per_second,
            settings_per_second=limits.max_settings_per_second,
            max_buffered_bytes=limits.max_buffered_bytes,
            max_header_bytes=limits.max_header_bytes,
            max_headers=limits.max_headers,
            unfinished_message_timeout=limits.unfinished_message_timeout,
        ),
    )
