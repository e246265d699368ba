"""Faults around the Redis store: servers killed, Redis itself stopped, mid-flow.

Real processes: a ``redis-server`` with AOF (``appendonly yes``, ``appendfsync
always``: "accepted" is then on Redis's disk), one or two ``mas serve`` on it,
a sender and a recorder in their own ``mas agent`` processes (with two servers
the sender talks to one and the recorder to the other, so every message
crosses servers).

* kill -9 loop: the servers are killed in turn under load and restarted; a
  killed server's in-flight deliveries come back when its lease expires.
* Redis outage: ``redis-server`` is stopped (SIGTERM: it exits cleanly; SIGKILL:
  a crash, the AOF replayed at restart) for longer than the servers'
  reconnect window, then started again on its port. Every mas server must stay
  up and resume by itself.

In both, nothing accepted may be lost, and once the traffic is acked nothing
may stay pending (no entry in any queue's XPENDING, none waiting in a front
list for redelivery). Short forms: 3 kills with two servers, one 20 s outage
(SIGTERM, two servers; beyond the 10 s reconnect window); ``--long-faults``: 6
kills with one and with two servers, 30 s outages (beyond the 15 s lease too),
SIGTERM and SIGKILL, one and two servers.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_client
from fault_harness import (
    HERE,
    PER_ROUND,
    AgentSpec,
    Tally,
    agent_process,
    certify,
    drain,
    expect,
    kill_loop,
    long_faults,
    recovered_after,
    report,
    tail,
    wait_accepted,
    write_project,
)
from processes import ServerProcess, free_port, wait_for
from redis_server import RedisServer, running_redis

pytestmark = pytest.mark.slow

LEASE = 15.0  # seconds: the Redis store's default lease_seconds
DRAIN = LEASE * 4 + 30  # seconds for every accepted message to be delivered at the end


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """The short form runs a subset of the combinations; ``--long-faults`` all of them."""
    long = long_faults(metafunc.config)
    if "kill_servers" in metafunc.fixturenames:
        metafunc.parametrize("kill_servers", [1, 2] if long else [2])
    if "outage" in metafunc.fixturenames:
        combos = [
            pytest.param((how, servers), id=f"{how}-{servers}-server")
            for how in ("SIGTERM", "SIGKILL")
            for servers in (1, 2)
        ]
        metafunc.parametrize("outage", combos if long else [combos[1]])


def stranded(url: str) -> dict[str, int]:
    """Pending entries per queue stream, and entries waiting in front lists."""
    found: dict[str, int] = {}
    client = redis_client.Redis.from_url(url, socket_timeout=5)
    try:
        for key in client.scan_iter(match="*:queue:*", _type="stream"):
            try:
                groups = client.xinfo_groups(key)
            except redis_client.ResponseError:  # the last ack deleted the stream meanwhile
                continue
            for group in groups:
                if group["pending"]:
                    found[f"{key.decode()} pending"] = int(group["pending"])
        for key in client.scan_iter(match="*:front:*", _type="list"):
            if length := client.llen(key):
                found[f"{key.decode()} front"] = int(length)
    finally:
        client.close()
    return found


def _projects(tmp_path: Path, url: str, servers: int, sending: dict[str, object]) -> list[Path]:
    directories = []
    for index in range(servers):
        directory = tmp_path / f"server{index}"
        directory.mkdir()
        write_project(
            directory,
            port=free_port(),
            store=f"{{backend: redis, url: '{url}'}}",
            certs="../certs",
            # Servers sharing one Redis share one audit key (the first one makes it).
            gateway={"audit": {"key_path": "../audit.key"}},
            agents=[
                AgentSpec("sender", "Sender", {"targets": ["recorder"], **sending}),
                AgentSpec("recorder", "Recorder"),
            ],
            permissions=[{"type": "allow", "sender": "sender", "targets": ["recorder"]}],
        )
        directories.append(directory)
    certify(directories[0])
    return directories


def _address(directory: Path) -> str:
    for line in (directory / "mas.yaml").read_text().splitlines():
        if line.startswith("server_listen_addr: "):
            return line.split(": ", 1)[1]
    raise AssertionError("no server_listen_addr")


@contextlib.contextmanager
def _cluster(
    tmp_path: Path, redis: RedisServer, servers: int, sending: dict[str, object]
) -> Iterator[tuple[list[ServerProcess], subprocess.Popen[bytes], Path, Path]]:
    """Servers, a sender on the first and a recorder on the last; all reaped on exit."""
    directories = _projects(tmp_path, redis.url, servers, sending)
    sender_log, recorder_log = tmp_path / "sender.log", tmp_path / "recorder.log"
    with contextlib.ExitStack() as stack:
        processes = [
            stack.enter_context(ServerProcess(d, tmp_path / f"{d.name}.log", path=(HERE,)))
            for d in directories
        ]
        first, last = directories[0], directories[-1]
        stack.enter_context(agent_process("recorder", last, recorder_log, _address(last)))
        sender = stack.enter_context(agent_process("sender", first, sender_log, _address(first)))
        yield processes, sender, sender_log, recorder_log


def _finish(
    name: str,
    redis: RedisServer,
    processes: list[ServerProcess],
    sender: subprocess.Popen[bytes],
    sender_log: Path,
    recorder_log: Path,
    count: int,
    **figures: object,
) -> tuple[Tally, dict[str, int]]:
    """Wait for the sender and the drain; report; the tally and the entries left pending."""
    assert sender.wait(timeout=240) == 0, tail(sender_log)
    tally = drain([sender_log], [recorder_log], timeout=DRAIN)
    with contextlib.suppress(AssertionError):  # acks are asynchronous: give them a moment
        wait_for(lambda: not stranded(redis.url), LEASE + 5, "no pending entries")
    left = stranded(redis.url)
    report(name, **tally.figures(), **figures, stranded=left)
    assert len(tally.accepted) >= count
    for server in processes:
        assert server.alive(), tail(server.log)
    return tally, left


def test_redis_servers_killed_in_turn_lose_nothing(
    tmp_path: Path, kill_servers: int, request: pytest.FixtureRequest
) -> None:
    kills = 6 if long_faults(request.config) else 3
    stop = tmp_path / "stop-sending"
    with running_redis(appendonly=True) as redis:
        with _cluster(tmp_path, redis, kill_servers, {"stop_file": str(stop)}) as (
            servers,
            sender,
            sender_log,
            recorder_log,
        ):
            recoveries = kill_loop(servers, kills, sender_log, recorder_log)
            stop.touch()
            tally, left = _finish(
                f"redis AOF kill -9 x{kills}, {kill_servers} server(s)",
                redis,
                servers,
                sender,
                sender_log,
                recorder_log,
                PER_ROUND * (kills + 1),
                recover=recoveries,
            )
            assert not tally.lost, f"{len(tally.lost)} accepted messages never delivered"
            assert not left, f"entries still pending after the traffic was acked: {left}"


def test_redis_outage_is_ridden_out(
    tmp_path: Path, outage: tuple[str, int], request: pytest.FixtureRequest
) -> None:
    how, servers = outage
    down_for = 30.0 if long_faults(request.config) else 20.0
    count = 1200
    with running_redis(appendonly=True) as redis:
        with _cluster(tmp_path, redis, servers, {"count": count}) as (
            processes,
            sender,
            sender_log,
            recorder_log,
        ):
            wait_accepted([sender_log], 200, 120, "sends before the outage")
            redis.stop(kill=how == "SIGKILL")
            stopped = time.monotonic()
            died: dict[str, float] = {}
            try:
                while time.monotonic() - stopped < down_for:
                    for server in processes:
                        if not server.alive() and server.config_dir.name not in died:
                            died[server.config_dir.name] = round(time.monotonic() - stopped, 1)
                    time.sleep(0.1)
            finally:
                redis.start()
            restarted = time.time()
            deaths = {
                name: tail(p.log, 600)
                for p in processes
                if not p.alive()
                for name in [p.config_dir.name]
            }
            for server in processes:  # as a supervisor would, so that loss can still be counted
                if not server.alive():
                    server.start()
            recovery = recovered_after(
                [sender_log], restarted, 90, "a send accepted after Redis is back"
            )
            tally, left = _finish(
                f"redis {how} outage {down_for:g}s, {servers} server(s)",
                redis,
                processes,
                sender,
                sender_log,
                recorder_log,
                count,
                recover_seconds=round(recovery, 2),
                servers_died_after_seconds=died,
            )
            expect(
                not died,
                f"mas servers exited during the outage (seconds into it): {died}; {deaths}",
            )
            expect(not left, f"entries still pending after the traffic was acked: {left}")
            expect(
                not tally.lost,
                f"{len(tally.lost)} of {len(tally.accepted)} accepted messages not delivered"
                f" {DRAIN} s after Redis came back",
            )
