"""In-process servers for tests: a real ``MasServer`` on loopback with a test PKI."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import trio

from ..config import MasConfig, check_config
from ..runtime import build_store
from ..server import MasServer
from ..store import Store
from .pki import TestPKI


def make_config(
    agents: Sequence[str | Mapping[str, Any]],
    permissions: Sequence[Mapping[str, Any]] = (),
    **sections: Any,
) -> MasConfig:
    """A ``MasConfig`` for tests, listening on 127.0.0.1 port 0, with the memory store.

    ``agents`` are ids or full agent entries; ``permissions`` are rules as in
    mas.yaml; other keyword arguments are top-level sections (``limits={...}``).
    """
    raw: dict[str, Any] = {
        "server_listen_addr": "127.0.0.1:0",
        "store": {"backend": "memory"},
        "agents": [{"agent_id": a} if isinstance(a, str) else dict(a) for a in agents],
        "permissions": [dict(p) for p in permissions],
        **sections,
    }
    config = msgspec.convert(raw, MasConfig)
    check_config(config)
    return config


@asynccontextmanager
async def open_test_server(
    config: MasConfig, pki: TestPKI, store: Store | None = None
) -> AsyncIterator[MasServer]:
    """Run a ``MasServer`` for the body of the ``async with``; ``server.address`` is bound.

    Without ``store``, the store the config names is used (its limits applied).
    """
    server = MasServer(
        config, store if store is not None else build_store(config), pki.server_ssl_context()
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        try:
            yield server
        finally:
            nursery.cancel_scope.cancel()
