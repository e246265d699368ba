"""Several servers on one Redis: agents on different servers talk; a dead server's work moves.

Real processes: a ``redis-server`` with persistence, two ``mas serve`` processes
sharing it, agents in their own processes. The server holding the recorder's
session is killed with SIGKILL mid-stream; the recorder comes back on the other
server, which reclaims the dead server's in-flight deliveries once its lease
expires. Every message the sender saw accepted must be recorded.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from redis_server import require_redis_server, running_redis
from test_crash import _accepted, _env, _free_port, _process, _wait_for

from mas.store import StoreLimits

pytestmark = pytest.mark.slow


def _recorded(url: str) -> set[int]:
    from mas.store.redis import open_redis_store

    async def read() -> dict[str, str]:
        async with open_redis_store(url, StoreLimits()) as store:
            return (await store.read_state("recorder")).values

    return {int(key[1:]) for key in trio.run(read)}


def test_agents_on_two_servers_and_a_killed_server(tmp_path: Path) -> None:
    require_redis_server()
    count = 300
    with running_redis(appendonly=True) as redis:
        ports = [_free_port(), _free_port()]
        for name, port in zip(("a", "b"), ports, strict=True):
            directory = tmp_path / name
            directory.mkdir()
            (directory / "mas.yaml").write_text(
                f"server_listen_addr: 127.0.0.1:{port}\n"
                f"tls_ca_path: ../certs/ca.pem\ntls_server_cert_path: ../certs/server.pem\n"
                "tls_server_key_path: ../certs/server.key\n"
                f"store: {{backend: redis, url: '{redis.url}'}}\n"
                "gateway: {rate_limit: {per_minute: 100000, per_hour: 1000000},"
                # Servers sharing a chain share its key (made by the first to start).
                " audit: {key_path: ../audit.key}}\n"
                "permissions: [{type: allow, sender: sender, targets: [recorder]}]\n"
                "agents:\n"
                f"  - {{agent_id: sender, class_path: 'crash_agents:Sender',"
                f" init_kwargs: {{count: {count}}},"
                " tls_cert_path: ../certs/sender.pem, tls_key_path: ../certs/sender.key}\n"
                "  - {agent_id: recorder, class_path: 'crash_agents:Recorder',"
                " tls_cert_path: ../certs/recorder.pem, tls_key_path: ../certs/recorder.key}\n"
            )
        certs = subprocess.run(
            [sys.executable, "-m", "mas", "certs", str(tmp_path / "a")],
            env=_env(),
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert certs.returncode == 0, certs.stderr
        logs = {name: tmp_path / f"{name}.log" for name in ("a", "b", "sender", "rec1", "rec2")}
        with (
            _process("serve", str(tmp_path / "a"), cwd=tmp_path, log=logs["a"]) as server_a,
            _process("serve", str(tmp_path / "b"), cwd=tmp_path, log=logs["b"]),
        ):
            for name in ("a", "b"):
                _wait_for(
                    lambda n=name: "listening on" in logs[n].read_text(errors="replace"),
                    30,
                    f"server {name}",
                )
            address_a, address_b = (f"127.0.0.1:{port}" for port in ports)
            recorder_args = ("agent", "recorder", str(tmp_path / "a"), "--server")
            with (
                _process(*recorder_args, address_a, cwd=tmp_path, log=logs["rec1"]) as first,
                _process(
                    "agent",
                    "sender",
                    str(tmp_path / "b"),
                    "--server",
                    address_b,
                    cwd=tmp_path,
                    log=logs["sender"],
                ) as sender,
            ):
                _wait_for(lambda: len(_accepted(logs["sender"])) >= count // 3, 60, "sends")
                # The recorder's server and host die together, deliveries in flight.
                server_a.send_signal(signal.SIGKILL)
                first.send_signal(signal.SIGKILL)
                with _process(*recorder_args, address_b, cwd=tmp_path, log=logs["rec2"]) as again:
                    assert sender.wait(timeout=120) == 0
                    accepted = _accepted(logs["sender"])
                    assert accepted == set(range(count))
                    _wait_for(lambda: accepted <= _recorded(redis.url), 90, "every number")
                    again.send_signal(signal.SIGTERM)
                    assert again.wait(timeout=30) == 0
