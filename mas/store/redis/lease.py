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
import math

import trio

from . import scripts as lua
from .client import RedisClient, StoreUnavailableError
from .keys import Keys
from .scripts import MAX_DEAD_LETTERS

log = logging.getLogger("mas.store.redis")


class Lease:
    """This server's membership: join, renew (reclaiming expired servers), leave."""

    def __init__(
        self,
        client: RedisClient,
        keys: Keys,
        server_id: str,
        lease_seconds: float,
        release_max_attempts: int | None,
    ) -> None:
        self._client = client
        self._keys = keys
        self._server_id = server_id
        self.lease_ms = max(1, round(lease_seconds * 1000))
        self._interval = lease_seconds / 3
        self._release_max_attempts = release_max_attempts
        self._scope = trio.CancelScope()
        self._leave_on_close = True
        self.handed_back = 0  # deliveries this server handed back (expired servers, its own)

    async def renew(self, mode: str) -> bool:
        """Run the lease script; whether the lease was held.

        ``join`` hands back what an earlier process with this id left, ``beat`` renews
        and reclaims servers whose lease expired, ``renew`` only renews, ``leave`` hands
        back and quits.
        """
        keys = self._keys
        held, handed_back = await self._client.evalsha(
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

        A lease that expired while Redis was away is no evidence that its server died:
        Redis downtime counts against every server's lease alike. So after a failed
        renewal, or one that finds this server's own lease expired, renewals only renew
        (``renew``) for a grace of one lease period, giving every live server time to
        renew its own; only then do they reclaim servers whose lease is still gone.

        Error handling: a failed renewal is logged and tried again at the next
        interval (two may fail before the lease expires).
        """
        grace_until = 0.0  # Trio time before which expired servers are not reclaimed
        with self._scope:
            while True:
                await trio.sleep(self._interval)
                mode = "beat" if trio.current_time() >= grace_until else "renew"
                try:
                    held = await self.renew(mode)
                except StoreUnavailableError as exc:
                    log.warning("lease of server %s not renewed: %s", self._server_id, exc)
                    grace_until = math.inf  # set for real once Redis answers again
                    continue
                if not held or math.isinf(grace_until):
                    grace_until = trio.current_time() + self.lease_ms / 1000
                if not held:
                    log.warning(
                        "lease of server %s had expired (was Redis away?); reclaiming no "
                        "other server for %.0f s, so that live ones can renew theirs",
                        self._server_id,
                        self.lease_ms / 1000,
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
