"""The Redis store: queues on Redis Streams, shared by several ``mas`` servers.

``open_redis_store(url, limits)`` yields a ``RedisStore`` that keeps the ``Store``
contract (``mas.store.base``) for every server sharing one Redis (and namespace).
Every operation is one Lua script or plain command sent on the client's lane
(``mas.store.redis.client``), which batches concurrent operations into one
pipeline: enqueue, claim and ack each cost one round trip, shared by every
operation in the same batch.

Key layout (``ns`` is the namespace, ``q`` a queue: ``<agent>`` for an agent's
shared queue, ``<agent>/<instance>`` for an instance's reply queue)::

    ns:queue:<q>         stream, consumer group "mas": the messages of a queue
    ns:front:<q>         list: entries handed back for redelivery, taken first
    ns:waiting           hash q -> messages waiting (max_queue_length, queue_depth)
    ns:delayed           sorted set: retries by not_before
    ns:dlq:<agent>       stream: dead letters (whole message, reason, time)
    ns:dlq-agents        set: agents with dead letters
    ns:corr:<id>         hash: an open request (target, expiry, record)
    ns:audit             list: the audit chain, record seq n at index n - 1 (JSON)
    ns:audit-head        "<last hash> <server>" (compare-and-set by every append)
    ns:audit-turn        the server that lost a race for the chain and writes next
    ns:audit-anchor      "<seq> <hash>" of the last audit record trimmed (retention)
    ns:audit-key-id      the id (mas.audit.chain.key_id) of the key every server links with
    ns:state:<agent>     hash: key -> JSON text;  ns:state-bytes  hash agent -> size
    ns:state-versions    hash agent -> state version (kept on reset)
    ns:servers           set of server ids;  ns:lease:<server>  key with a PX lease
    ns:claims:<server>   set: queues where that server's sessions hold deliveries
    ns:wake              channel: "<origin server> <q>": a queue has messages

In flight
    A delivery is a pending entry of the session's consumer
    (``<server id>:<session id>``); its delivery count is its attempt. Ack
    deletes the entry (``XACK`` + ``XDEL``), so memory holds only messages that
    may still be delivered; a stream emptied by acks is kept (the next enqueue
    appends to it in one command) until the release of a session of its queue,
    or a reclaim, deletes it. Retry parks the entry in the
    delayed set; release and reclaim put it back at the front of its queue.

Servers and leases
    Each server renews ``ns:lease:<id>`` (``SET PX``) every third of
    ``lease_seconds``. A renewal also checks the other servers: one whose lease
    has expired (in Redis time) has its sessions' deliveries handed back to the
    front of their queues, one attempt more, and every server is woken. A live
    server's deliveries are never taken, however long its handlers run.
    Closing the store hands back what its sessions still hold and drops the lease.
    Server ids must be unique among live servers; a fixed id lets a restarted
    server hand back what its previous process held at once.

Wake-ups
    ``watch`` holds one subscription per server (to ``ns:wake``), read in a
    worker thread, and calls ``wake`` once per queue per batch of
    notifications. An enqueue publishes its queue when the queue was empty and
    other servers are in ``ns:servers`` (sessions that saw it non-empty keep
    claiming until it is empty, and a server's own enqueues ring its sessions
    directly); hand-backs and retries falling due always publish.

Order
    ``claim`` takes the reply queue before the shared one; in each, the front
    list first (entries handed back or retries fallen due, each pushed to the
    front, so a released session's entries come back in their original order),
    then new entries (``XREADGROUP``). Attempts are exact: the pending entry's
    delivery count, set with ``XCLAIM ... RETRYCOUNT`` on redelivery.

Cost (measured by ``tests/component/test_store_redis.py``)
    Client side: an enqueue batch, a claim and an ack batch are one ``EVALSHA``
    and one round trip each, and concurrent calls share the round trip; in
    ``route_batch`` the claims ride in the enqueue's pipeline, and in
    ``ack_recorded`` the acks in their records': a request/reply routed one at a
    time costs 4 round trips in all, a one-way message 1.35 (``tests/e2e/
    test_redis_commands.py``). Redis
    side, scripts included: 8 commands for a batch of one message with its audit
    record, 7 per claim batch that takes messages (3 when neither queue has any
    waiting: the ``waiting`` counts are read first), 3 per ack batch of one
    stream plus an ``XPENDING`` per entry.

    ``enqueue_many`` is one ``EVALSHA`` for the whole batch (messages, their
    correlations and audit records), one round trip unless a queue filled or
    drained unexpectedly or another server won the race for the audit chain
    (``mas.store.redis.batch``). Redis side: per message one ``XADD`` (plus
    ``HSET`` and ``PEXPIREAT`` with a correlation), per queue 2 commands
    (plus ``SCARD``, and ``PUBLISH`` with other servers, when it was empty; plus
    ``XGROUP CREATE`` and one more ``XADD`` when its stream is new), per batch
    4 (the script, the chain's three). ``ack_many`` is one ``EVALSHA`` whatever
    its streams, and 2 commands per stream plus an ``XPENDING`` per entry.

    End to end (``tests/e2e/test_redis_commands.py``, every command of the
    server counted): 58 commands per request/reply and 26 per one-way message
    one at a time (the seed system: 59 and 28), about 16 and 8 with 32 in
    flight.

Durability and limits
    With ``appendonly yes`` and ``appendfsync always`` an accepted message
    survives a Redis crash; with ``everysec`` the last second may be lost on a
    crash (not on a restart). An ``AcceptWait`` (``accept``) makes every
    pipeline with enqueues end with ``WAIT``/``WAITAOF``, and refuses its
    enqueues (``store_not_durable``) when too few acknowledged them. Needs
    Redis 6.2 or newer, on one node (scripts derive some queue keys at run
    time, so not Redis Cluster). A retry falls due
    by the clock of the caller of ``claim``/``pending_agents``: if the server
    that scheduled it dies first, the next claim on any server promotes it.

Modules: ``store`` (the store), ``client`` (pool, batching, errors),
``scripts`` (queue and audit Lua), ``batch`` (``enqueue_many``,
``ack_many``), ``lease`` (servers), ``watch`` (the subscriber),
``audit`` (the chain), ``dlq``, ``records`` (correlations,
state), ``keys`` (key names, decoding), ``durability`` (start-up
checks), ``accept`` (the wait before an accept).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from ...errors import ConfigError
from ..base import StoreLimits
from . import batch as batch
from . import records as records
from . import scripts as lua
from .accept import NO_WAIT, AcceptWait
from .audit import AUDIT_SCRIPTS
from .client import RedisClient, StoreUnavailableError
from .durability import check_accept_wait, check_persistence
from .keys import check_id
from .store import RedisStore

__all__ = ["RedisStore", "StoreUnavailableError", "open_redis_store"]

log = logging.getLogger("mas.store.redis")


@asynccontextmanager
async def open_redis_store(
    url: str,
    limits: StoreLimits,
    *,
    server_id: str | None = None,
    namespace: str = "mas",
    lease_seconds: float = 15.0,
    socket_timeout: float = 5.0,
    reconnect_timeout: float = 10.0,
    audit_key: bytes | None = None,
    release_max_attempts: int | None = None,
    require_durable: bool = False,
    accept: AcceptWait = NO_WAIT,
) -> AsyncIterator[RedisStore]:
    """Connect to Redis at ``url`` as one server of the ``namespace``; close on exit.

    Takes this server's lease (handing back what an earlier process with the
    same ``server_id`` left in flight) and renews it in a background task.
    ``socket_timeout`` bounds every connect and read; operations wait up to
    ``reconnect_timeout`` for Redis to accept connections again. ``audit_key``
    is the HMAC key of the audit chain (None: plain SHA-256); a key that is not
    the one other servers link the chain with is refused (ConfigError). Deliveries handed
    back from ended servers count an attempt; pass the router's ``max_attempts``
    as ``release_max_attempts`` to dead-letter those past it (``session_lost``;
    None: requeue all), as ``release_session`` does. ``accept`` says what an
    enqueue waits for before it is answered (``mas.store.redis.accept``); one
    Redis cannot do is refused at start (ConfigError).

    Error handling: raises ``StoreUnavailableError`` if Redis cannot be reached
    at start. Cancellation: on exit the hand-back and lease release are
    shielded and bounded by ``socket_timeout``.
    """
    server_id = check_id("server id", server_id or secrets.token_hex(8), ": ")
    check_id("namespace", namespace, " ")
    client = RedisClient(
        url,
        scripts=(*lua.SCRIPTS, *records.SCRIPTS, *batch.SCRIPTS, *AUDIT_SCRIPTS),
        socket_timeout=socket_timeout,
        reconnect_timeout=reconnect_timeout,
        client_name=f"mas-{server_id}",
        accept_wait=accept,
    )
    store = RedisStore(
        client,
        limits,
        server_id=server_id,
        namespace=namespace,
        lease_seconds=lease_seconds,
        audit_key=audit_key,
        release_max_attempts=release_max_attempts,
    )
    # Raised after the nursery closes, so callers see it as is, not in an exception group.
    failure: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(client.run)
            try:
                await client.load_scripts()
                await check_persistence(client, client.safe_url, require_durable=require_durable)
                await check_accept_wait(client, client.safe_url, accept)
                held = await store._lease.renew("join")
                await store._audit.load()
                if audit_key is not None:  # a keyless opener (a reader, a test) links unkeyed
                    await store._audit.check_key(store._keys.audit_key_id)
            except (StoreUnavailableError, ConfigError) as exc:
                failure = exc
                nursery.cancel_scope.cancel()
            else:
                if held:
                    log.warning("server id %s was still leased: is it used twice?", server_id)
                nursery.start_soon(store._lease.keep)
                nursery.start_soon(store.hand_back_orphans, lease_seconds / 3)
                try:
                    yield store
                except BaseException as exc:  # noqa: BLE001 (re-raised below)
                    failure = exc
                finally:
                    await store._lease.close(socket_timeout)
                    nursery.cancel_scope.cancel()
    finally:
        client.close()
    if failure is not None:
        raise failure
