"""A server's lease in a shared Redis store, and the reclaim of expired servers.

Each server holds ``ns:lease:<id>`` (``SET PX``, in Redis time) and renews it
every third of the lease. A renewal (the ``lease`` script) also looks at the
other servers in ``ns:servers``: one whose lease expired has every delivery its
sessions held handed back to the front of its queue, one attempt more (or
dead-lettered past ``release_max_attempts``), and all servers are woken. A live
server's deliveries are never taken, however long its handlers run.

``join`` (at start) first hands back what an earlier process with the same id
left; ``leave`` (at close) hands back what this server's sessions still hold
and drops the lease, so other servers need not wait for it to expire.
"""

from __future__ import annotations

import logging

import trio

from . import redis_scripts as lua
from .redis_keys import Keys
from .redis_link import RedisLink, StoreUnavailableError
from .redis_scripts import MAX_DEAD_LETTERS

log = logging.getLogger("mas.store.redis")


class Lease:
    """This server's membership: join, renew (reclaiming expired servers), leave."""

    def __init__(
        self,
        link: RedisLink,
        keys: Keys,
        server_id: str,
        lease_seconds: float,
        release_max_attempts: int | None,
    ) -> None:
        self._link = link
        self._keys = keys
        self._server_id = server_id
        self.lease_ms = max(1, round(lease_seconds * 1000))
        self._interval = lease_seconds / 3
        self._release_max_attempts = release_max_attempts
        self._scope = trio.CancelScope()
        self._leave_on_close = True
        self.handed_back = 0  # deliveries this server handed back (expired servers, its own)

    async def renew(self, mode: str) -> bool:
        """Run the lease script (``join``, ``beat``, ``leave``); whether the lease was held."""
        keys = self._keys
        held, handed_back = await self._link.evalsha(
            "lease",
            lua.LEASE,
            [keys.lease(self._server_id), keys.servers, keys.waiting],
            [
                mode,
                self._server_id,
                self.lease_ms,
                keys.ns,
                keys.wake_channel,
                self._release_max_attempts or "",
                MAX_DEAD_LETTERS,
            ],
        )
        self.handed_back += handed_back
        if handed_back:
            log.log(
                logging.INFO if mode == "leave" else logging.WARNING,
                "server %s (%s) handed back %d deliveries of ended or expired servers",
                self._server_id,
                mode,
                handed_back,
            )
        return bool(held)

    async def keep(self) -> None:
        """Renew the lease until ``close`` (runs in the store's nursery).

        Error handling: a failed renewal is logged and tried again at the next
        interval (two may fail before the lease expires).
        """
        with self._scope:
            while True:
                await trio.sleep(self._interval)
                try:
                    held = await self.renew("beat")
                except StoreUnavailableError as exc:
                    log.warning("lease of server %s not renewed: %s", self._server_id, exc)
                    continue
                if not held:
                    log.warning(
                        "lease of server %s had expired; its deliveries may be redelivered",
                        self._server_id,
                    )

    async def close(self, shutdown_timeout: float) -> None:
        """Stop renewing; hand back what sessions still hold and drop the lease (bounded)."""
        self._scope.cancel()
        if not self._leave_on_close:
            return
        with trio.CancelScope(shield=True), trio.move_on_after(shutdown_timeout):
            try:
                await self.renew("leave")
            except StoreUnavailableError as exc:
                log.warning("could not hand back deliveries on close: %s", exc)

    def simulate_crash(self) -> None:
        """Stop renewing and skip the hand-back on close, as if the process died."""
        self._scope.cancel()
        self._leave_on_close = False
