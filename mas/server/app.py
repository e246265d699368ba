"""``MasServer``: the server's nursery tree (router timers, then the gRPC listener).

::

    MasServer.serve
    ├── store.watch       wakes sessions for messages other servers enqueued (shared stores)
    ├── router.run        wakes sessions when delayed retries fall due
    └── GrpcServer.serve  TLS listener -> connections -> RPCs (sessions live here)

``serve`` reports the bound address through ``task_status`` once the listener
accepts connections. ``drain`` ends every session with ``UNAVAILABLE
server_shutting_down`` (clients reconnect elsewhere) and waits, bounded, for
their deliveries to be requeued; cancelling ``serve`` then closes the rest.
"""

from __future__ import annotations

import logging
import ssl
from typing import Any

import trio

from ..clock import TrioWallClock
from ..config import MasConfig
from ..policy.authz import AccessPolicy
from ..store import Store
from .grpc import BoundAddress, GrpcServer, ServerLimits
from .router import Router, RoutingPolicy
from .servicer import RuntimeServicer
from .sessions import SessionRegistry

log = logging.getLogger("mas.server")


def _routing_policy(config: MasConfig) -> RoutingPolicy:
    return RoutingPolicy(
        access=AccessPolicy.from_config(config.permissions, config.agent_ids),
        agent_ids=config.agent_ids,
    )


class MasServer:
    """The MAS server: identity, policy, routing and sessions over mTLS gRPC."""

    def __init__(self, config: MasConfig, store: Store, ssl_context: ssl.SSLContext) -> None:
        self._config = config
        self._policy = _routing_policy(config)
        self.store = store
        self.registry = SessionRegistry()
        self._ssl_context = ssl_context
        self._router: Router | None = None
        self._servicer: RuntimeServicer | None = None
        self._grpc: GrpcServer | None = None
        self.address: BoundAddress | None = None

    @property
    def config(self) -> MasConfig:
        return self._config

    async def serve(
        self, *, task_status: trio.TaskStatus[BoundAddress] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run the server until cancelled; reports the bound address when it accepts."""
        limits = self._config.limits
        router = self._router = Router(
            self.store, self.registry, lambda: self._policy, limits, TrioWallClock()
        )
        self._servicer = RuntimeServicer(
            router=router, registry=self.registry, store=self.store, config=lambda: self._config
        )
        self._grpc = GrpcServer(
            self._servicer,
            self._ssl_context,
            ServerLimits(
                max_message_bytes=limits.max_message_bytes,
                max_concurrent_streams=limits.max_concurrent_streams,
                max_connections=limits.max_connections,
                handshake_timeout=limits.handshake_timeout,
                first_message_timeout=limits.hello_timeout,
                write_timeout=limits.write_timeout,
            ),
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(self.store.watch, self.registry.ring)
            await nursery.start(router.run)
            self.address = await nursery.start(
                self._grpc.serve, self._config.listen_host, self._config.listen_port
            )
            task_status.started(self.address)

    def reload(self, config: MasConfig) -> None:
        """Apply a new configuration: policy and allowlist now, sessions of removed agents end."""
        self._config = config
        self._policy = _routing_policy(config)
        for session in self.registry.all():
            if session.agent_id not in config.agent_ids:
                log.warning(
                    "ending session %s/%s: agent removed", session.agent_id, session.instance_id
                )
                session.end("UNAUTHENTICATED", "not_allowlisted")

    async def drain(self, grace_period: float) -> None:
        """End every session (clients may reconnect elsewhere); wait up to ``grace_period``."""
        for session in self.registry.all():
            session.end("UNAVAILABLE", "server_shutting_down")
        with trio.move_on_after(grace_period):
            await self.registry.wait_empty()

    def statistics(self) -> dict[str, Any]:
        """Counters for logs and tests."""
        return {
            "sessions": len(self.registry.all()),
            "connections": self._grpc.active_connections if self._grpc else 0,
            "refused_handshakes": self._grpc.refused_handshakes if self._grpc else 0,
            "refused_identities": self._servicer.refused_identities if self._servicer else 0,
            "delivered": self._router.delivered if self._router else 0,
            "dead_lettered": self._router.dead_lettered if self._router else 0,
        }
