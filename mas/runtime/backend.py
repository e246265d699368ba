"""The store a configuration names, with its bounds and its audit key, opened.

The composition layer is the only place that chooses a store backend
(``store.backend``: memory, sqlite or redis) and reads the audit key's
environment variable; ``mas run``, ``mas serve``, ``mas dlq`` and ``mas audit``
open their store here.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

import trio

from ..audit.chain import key_from_env
from ..audit.keys import chain_key, default_key_path
from ..config import MasConfig, redact_url
from ..store import MemoryStore, Store, StoreLimits

log = logging.getLogger("mas.runtime")


def store_limits(config: MasConfig) -> StoreLimits:
    """The store bounds a configuration asks for."""
    limits = config.limits
    return StoreLimits(
        max_queue_length=limits.max_queue_length,
        max_message_age=limits.max_message_age,
        max_state_bytes=limits.max_state_bytes,
    )


def build_store(config: MasConfig) -> Store:
    """An in-memory store with the configuration's bounds (tests, throwaway runs).

    Its chain is keyed only by ``gateway.audit.hmac_key_env`` or an explicit
    ``gateway.audit.key_path``: a throwaway store makes no key file of its own.
    """
    audit = config.gateway.audit
    if audit.hmac_key_env is None and audit.key_path is not None:
        return MemoryStore(store_limits(config), audit_key=audit_key(config, Path.cwd()))
    key = key_from_env(audit.hmac_key_env, os.environ)
    return MemoryStore(store_limits(config), audit_key=key)


def sqlite_path(config: MasConfig, base_dir: Path) -> Path:
    """The SQLite store's file: ``store.path``, else ``mas.sqlite3`` next to mas.yaml."""
    from ..store.sqlite import DEFAULT_FILENAME

    return Path(config.store.path or base_dir / DEFAULT_FILENAME)


def redis_url(config: MasConfig) -> str:
    """The Redis store's URL: ``store.url``, else ``gateway.redis.url``."""
    return config.store.url or config.gateway.redis.url


def store_dir(config: MasConfig, base_dir: Path) -> Path:
    """The directory the store's files live in (mas.yaml's for Redis and memory)."""
    if config.store.backend == "sqlite":
        return sqlite_path(config, base_dir).parent
    return base_dir


def audit_key_path(config: MasConfig, base_dir: Path) -> Path:
    """The audit key file: ``gateway.audit.key_path``, else next to the store."""
    configured = config.gateway.audit.key_path
    return Path(configured) if configured else default_key_path(store_dir(config, base_dir))


def audit_key(config: MasConfig, base_dir: Path, *, create: bool = True) -> bytes | None:
    """The audit chain's HMAC key (see ``mas.audit.keys``); made at first start if ``create``."""
    audit = config.gateway.audit
    return chain_key(
        hmac_key_env=audit.hmac_key_env,
        key_path=audit_key_path(config, base_dir),
        audit_file=audit.file_path,
        env=os.environ,
        create=create,
    )


@contextlib.asynccontextmanager
async def open_store(config: MasConfig, base_dir: Path) -> AsyncIterator[Store]:
    """Open the store ``config.store`` names; it is closed when the block exits.

    The store is the outermost resource of a runtime: it outlives the server and
    the audit writer, and finishes their queued work when it closes.
    """
    key = await trio.to_thread.run_sync(audit_key, config, base_dir)
    limits = store_limits(config)
    backend = config.store.backend
    if backend == "memory":
        yield MemoryStore(limits, audit_key=key)
    elif backend == "sqlite":
        from ..store.sqlite import open_sqlite_store

        path = sqlite_path(config, base_dir)
        sync = config.store.sync or "full"
        async with open_sqlite_store(
            path,
            limits,
            audit_key=key,
            release_max_attempts=config.limits.max_attempts,
            sync=sync,
        ) as store:
            log.info(
                "store: sqlite %s (sync %s; queues and state persist across runs: delete it "
                "to start afresh)",
                path,
                sync,
            )
            yield store
    else:
        from ..store.redis import open_redis_store
        from ..store.redis.accept import DEFAULT_TIMEOUT, AcceptWait

        url = redis_url(config)
        redis = config.gateway.redis
        accept = AcceptWait(
            replicas=config.store.accept_replicas or 0,
            fsync=bool(config.store.accept_fsync),
            timeout=config.store.accept_timeout or DEFAULT_TIMEOUT,
        )
        async with open_redis_store(
            url,
            limits,
            audit_key=key,
            release_max_attempts=config.limits.max_attempts,
            socket_timeout=redis.socket_timeout or 5.0,
            require_durable=bool(config.store.require_durable),
            accept=accept,
        ) as redis_store:
            log.info("store: redis %s", redact_url(url))
            yield redis_store


def store_where(config: MasConfig, base_dir: Path) -> str:
    """Where the store is, for people: the SQLite file, the Redis URL (password hidden)."""
    backend = config.store.backend
    if backend == "sqlite":
        return str(sqlite_path(config, base_dir))
    if backend == "redis":
        return redact_url(redis_url(config))
    return "in this process's memory"
