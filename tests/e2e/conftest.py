"""Fixtures of the end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from redis_server import require_redis_server, running_redis


@pytest.fixture
def redis_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """A running redis-server's URL when the test's ``store`` parameter is redis, else None."""
    callspec = getattr(request.node, "callspec", None)
    if callspec is None or callspec.params.get("store") != "redis":
        yield None
        return
    require_redis_server()
    with running_redis() as server:
        yield server.url
