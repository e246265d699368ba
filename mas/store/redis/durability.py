"""What "accepted" means on a Redis store: read from Redis's own persistence settings.

A message is accepted once its enqueue script ran in Redis's memory. Whether it then
survives a Redis crash depends on Redis, not on ``mas``:

=====================================  ==============================================
``appendonly``, ``appendfsync``        an accepted message survives
=====================================  ==============================================
``yes``, ``always``                    a Redis crash or restart, a power loss
``yes``, ``everysec`` (Redis default)  a Redis restart; a crash or power loss may take
                                       back the last second
``yes``, ``no``                        a restart; a crash may lose what the OS did not
                                       write yet (tens of seconds)
``no`` (RDB snapshots or nothing)      nothing beyond the last snapshot: a crash loses
                                       every message accepted since
=====================================  ==============================================

A failover to an asynchronous replica can lose what the replica had not received yet,
whatever these settings. ``check_persistence`` reads them at start and says which row
applies: a warning for the last two rows, or (``require_durable``) a refusal to start.

An ``AcceptWait`` (``mas.store.redis.accept``: ``store.accept_replicas``,
``store.accept_fsync``) makes an accept wait for replicas or for the fsync itself;
``check_accept_wait`` refuses to start on a Redis that cannot do what it asks.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Final

from ...errors import ConfigError
from .accept import WAITAOF_VERSION, AcceptWait, parse_version
from .client import RedisClient, StoreUnavailableError

log = logging.getLogger("mas.store.redis")

DURABLE_FSYNC: Final = frozenset({"always", "everysec"})


def persistence_verdict(settings: dict[str, str]) -> tuple[bool, str]:
    """(durable enough, what a crash of Redis can lose) for ``CONFIG GET`` answers."""
    appendonly = settings.get("appendonly", "").lower()
    fsync = settings.get("appendfsync", "").lower()
    if appendonly != "yes":
        return False, (
            "appendonly is off: a Redis crash or restart loses every message accepted "
            "since the last snapshot"
        )
    if fsync == "always":
        return True, "appendonly yes, appendfsync always: accepted messages survive a crash"
    if fsync == "everysec":
        return True, (
            "appendonly yes, appendfsync everysec: a Redis crash may lose about the last "
            "second of accepted messages"
        )
    return False, (
        f"appendfsync {fsync or 'unknown'}: a Redis crash may lose what the OS had not written yet"
    )


def _pairs(reply: Sequence[Any]) -> dict[str, str]:
    flat = [x.decode() if isinstance(x, bytes) else str(x) for x in reply]
    return dict(zip(flat[::2], flat[1::2], strict=True))


async def check_persistence(client: RedisClient, safe_url: str, *, require_durable: bool) -> None:
    """Read Redis's persistence settings; warn, or refuse to start, when they lose messages.

    Raises ``StoreUnavailableError`` (the server does not start) when ``require_durable``
    and the settings cannot keep accepted messages through a Redis crash, or cannot be
    read (``CONFIG`` disabled, as some managed services do).
    """
    try:
        [appendonly, fsync] = await client.call(
            "start", ("CONFIG", "GET", "appendonly"), ("CONFIG", "GET", "appendfsync")
        )
        settings = {**_pairs(appendonly), **_pairs(fsync)}
    except StoreUnavailableError as exc:
        if require_durable:
            raise StoreUnavailableError(
                f"cannot read the persistence settings of Redis at {safe_url} ({exc}), and "
                "store.require_durable is set: allow CONFIG GET, or unset require_durable"
            ) from exc
        log.warning("could not read the persistence settings of Redis at %s: %s", safe_url, exc)
        return
    durable, meaning = persistence_verdict(settings)
    if durable:
        log.info("Redis at %s: %s", safe_url, meaning)
        return
    if require_durable:
        raise StoreUnavailableError(
            f"Redis at {safe_url}: {meaning}; store.require_durable is set, so the server "
            "does not start: set appendonly yes and appendfsync everysec or always"
        )
    log.warning(
        "Redis at %s: %s. Set appendonly yes (appendfsync everysec or always) to keep "
        "accepted messages, or store.require_durable: true to refuse to start without it",
        safe_url,
        meaning,
    )


def _info(reply: Any) -> dict[str, str]:
    """``INFO`` text (bytes) as field -> value."""
    text = reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply)
    fields = (line.partition(":") for line in text.splitlines() if ":" in line)
    return {key.strip(): value.strip() for key, _, value in fields}


async def check_accept_wait(client: RedisClient, safe_url: str, wait: AcceptWait) -> None:
    """Refuse to start (``ConfigError``) when this Redis cannot wait as ``wait`` asks.

    ``fsync`` needs ``WAITAOF`` (Redis 7.2 or newer) and ``appendonly yes``. Fewer
    connected replicas than ``replicas`` is only warned about: a replica may be
    starting, and until it is there every accept is refused (``store_not_durable``).
    """
    if not wait.active:
        return
    server, replication = await client.call("start", ("INFO", "server"), ("INFO", "replication"))
    version_text = _info(server).get("redis_version", "")
    version = parse_version(version_text)
    if wait.fsync:
        if version < WAITAOF_VERSION:
            raise ConfigError(
                f"Redis at {safe_url} is version {version_text or 'unknown'}, which has no "
                f"WAITAOF: store.accept_fsync needs Redis "
                f"{'.'.join(map(str, WAITAOF_VERSION))} or newer; upgrade Redis, or unset "
                "accept_fsync (appendfsync always gives the same guarantee for one node)"
            )
        [appendonly] = await client.call("start", ("CONFIG", "GET", "appendonly"))
        if _pairs(appendonly).get("appendonly", "").lower() != "yes":
            raise ConfigError(
                f"Redis at {safe_url} has appendonly off, so it has no append-only file to "
                "fsync: store.accept_fsync needs appendonly yes; set it, or unset accept_fsync"
            )
    role = _info(replication)
    if role.get("role") not in (None, "master"):
        raise ConfigError(
            f"Redis at {safe_url} is a replica (role {role.get('role')}): it takes no writes; "
            "point store.url at the primary"
        )
    connected = int(role.get("connected_slaves", "0") or 0)
    if connected < wait.replicas:
        log.warning(
            "Redis at %s has %d connected replica(s) and store.accept_replicas is %d: until "
            "enough are connected every message is refused (UNAVAILABLE store_not_durable)",
            safe_url,
            connected,
            wait.replicas,
        )
    log.info("Redis at %s: a message is accepted %s", safe_url, wait.describe())
