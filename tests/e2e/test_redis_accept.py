"""A sender's view of ``store.accept_replicas`` / ``accept_fsync`` (Redis WAIT, WAITAOF).

Real redis-server primary and replica; the replica is stopped with SIGSTOP. A real
server over loopback mTLS, agents of the SDK, and ``mas serve`` in a subprocess for
the start-up refusal.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from redis_server import RedisServer, running_redis, running_replica

from mas import Agent, UnavailableError
from mas.runtime import store_limits
from mas.store.redis import open_redis_store
from mas.store.redis.accept import AcceptWait
from mas.testing import TestPKI, make_config, open_test_server

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 0.5  # seconds an accept waits


@pytest.fixture(scope="module")
def primary() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


async def test_a_sender_is_refused_while_the_replica_is_stopped_and_accepted_after(
    pki: TestPKI, primary: RedisServer
) -> None:
    config = make_config(["a", "b"], [{"type": "allow", "sender": "a", "targets": ["b"]}])
    accept = AcceptWait(replicas=1, timeout=TIMEOUT)
    with running_replica(primary) as replica, trio.fail_after(60):
        async with (
            open_redis_store(primary.url, store_limits(config), accept=accept) as store,
            open_test_server(config, pki, store) as server,
        ):
            assert server.address is not None
            port = server.address.port
            async with Agent(
                "a", server_addr=f"127.0.0.1:{port}", tls=pki.client_ssl_context("a")
            ) as a:
                await a.send("b", "note", {"n": 1})  # acknowledged by the replica
                replica.pause()
                try:
                    with pytest.raises(UnavailableError) as refused:
                        await a.send("b", "note", {"n": 2})
                    assert refused.value.code == "UNAVAILABLE"
                    assert refused.value.reason == "store_not_durable"
                finally:
                    replica.resume()
                while True:  # accepted again once the replica is back
                    try:
                        await a.send("b", "note", {"n": 3})
                        break
                    except UnavailableError:
                        await trio.sleep(0.05)


def test_mas_serve_refuses_accept_fsync_on_redis_7_0(tmp_path: Path, primary: RedisServer) -> None:
    (tmp_path / "mas.yaml").write_text(
        "server_listen_addr: 127.0.0.1:0\n"
        f"store: {{backend: redis, url: '{primary.url}', accept_fsync: true}}\n"
        "agents: [{agent_id: a}]\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "mas", "serve", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "WAITAOF" in done.stderr and "7.2" in done.stderr, done.stderr
