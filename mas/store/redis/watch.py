"""The one blocking reader of a server: wake-ups for queues that other servers filled.

Scripts publish ``"<origin server> <queue>"`` on the namespace's wake channel
when a queue gets messages some server may not know about (see
``mas.store.redis``), so a notification costs no round trip. ``watch_queues``
holds one subscription, read in a worker thread that drops this server's own
notifications, and calls ``wake`` once per queue per batch of notifications.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import Callable
from typing import Final

import trio

from .client import BACKOFF_MAX, BACKOFF_MIN, Connection, RedisClient, StoreUnavailableError
from .keys import Keys, split_queue_name

log = logging.getLogger("mas.store.redis")

WATCH_WAIT: Final = 5.0  # seconds a subscriber read waits before looping (stop is pushed)
WATCH_BATCH: Final = 10_000  # notifications read per thread hop
STOP_TIMEOUT: Final = 2.0  # seconds allowed to unblock the reader on cancellation

Wake = Callable[[str, str | None], None]


async def watch_queues(
    client: RedisClient,
    keys: Keys,
    server_id: str,
    wake: Wake,
    *,
    on_wakes: Callable[[int], None],
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Call ``wake(agent_id, instance_id)`` for queues other servers filled, until cancelled.

    Reports ``task_status.started()`` once subscribed. ``on_wakes`` counts them.

    Error handling: a lost subscription is made again with bounded backoff, then
    every queue with waiting messages is woken (notifications may have been
    missed meanwhile). Cancellation: a message on a private channel unblocks the
    reader thread, so cancelling returns at once.
    """
    stop_channel = keys.stop_channel(server_id, secrets.token_hex(4))
    started, delay = False, BACKOFF_MIN
    while True:
        try:
            conn = await client.subscribe([keys.wake_channel, stop_channel])
        except StoreUnavailableError as exc:
            log.warning("watch: %s; retrying in %.2f s", exc, delay)
            await trio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)
            continue
        try:
            if started:
                [queues] = await client.call("watch", ("HKEYS", keys.waiting))
                for q in queues:
                    wake(*split_queue_name(q))
            else:
                task_status.started()
                started = True
            delay = BACKOFF_MIN
            await _listen(client, conn, keys, server_id, stop_channel, wake, on_wakes)
        except StoreUnavailableError as exc:
            log.warning("watch: %s; subscribing again", exc)
        finally:
            client.unsubscribe(conn)


async def _listen(
    client: RedisClient,
    conn: Connection,
    keys: Keys,
    server_id: str,
    stop_channel: str,
    wake: Wake,
    on_wakes: Callable[[int], None],
) -> None:
    reading = False

    async def unblock_reader_when_cancelled() -> None:
        try:
            await trio.sleep_forever()
        finally:
            if reading:
                # Failing that, the reader returns by itself within WATCH_WAIT.
                with (
                    trio.CancelScope(shield=True),
                    trio.move_on_after(STOP_TIMEOUT),
                    contextlib.suppress(StoreUnavailableError),
                ):
                    await client.call("watch", ("PUBLISH", stop_channel, b""))

    channel, mine = keys.wake_channel.encode(), server_id.encode() + b" "

    def keep(source: bytes, payload: bytes) -> bool:  # in the reader thread
        return source != channel or not payload.startswith(mine)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(unblock_reader_when_cancelled)
        try:
            while True:
                reading = True
                messages = await client.read_messages(conn, WATCH_WAIT, WATCH_BATCH, keep)
                reading = False
                queues = {
                    payload.partition(b" ")[2] for source, payload in messages if source == channel
                }
                for q in queues:
                    wake(*split_queue_name(q))
                on_wakes(len(queues))
        except StoreUnavailableError as exc:
            lost = exc  # raised outside the nursery, not inside an exception group
            reading = False
            nursery.cancel_scope.cancel()
    raise lost
