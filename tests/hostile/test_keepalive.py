"""The PING and SETTINGS budgets against a stock grpcio client with keepalive on.

A legitimate client may be configured aggressively (a keepalive PING every second, with
no call in flight, BDP probing, large messages): it must never be sent away. A client
PINGing faster than ``max_pings_per_second`` gets its GOAWAY, with ``too_many_pings``
in the debug data (the text grpc-core reads to back off).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import anyio
import trio
from rawclient import H2Attacker, grpc_message, h2_attacker
from test_compression import _generate_stubs

from mas._proto import runtime_pb2 as pb
from mas.testing import TestPKI

CLIENT = Path(__file__).with_name("grpcio_keepalive_client.py")
SECONDS = 8  # of the client's workload


async def _run_client(server: Any, stubs: Path) -> dict[str, Any]:
    certs = server.log_path.parent / "certs"
    result = await trio.run_process(
        [
            sys.executable,
            str(CLIENT),
            str(stubs),
            str(server.port),
            str(certs / "ca.pem"),
            str(certs / "mallet.pem"),
            str(certs / "mallet.key"),
            str(SECONDS),
        ],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    seen: dict[str, Any] = json.loads(result.stdout)
    return seen


def _cut_off(server: Any) -> list[str]:
    return [line for line in server.log() if "closed: too_many" in line]


async def test_aggressive_but_legitimate_keepalive_client_is_never_sent_away(
    hostile_server: Any, pki: TestPKI, tmp_path: Path
) -> None:
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    _generate_stubs(stubs)
    # (With max_pings_per_second at 1, this client is sent away: it does PING.)
    with hostile_server(limits={"idle_timeout": 2.0}) as server, trio.fail_after(90):
        seen = await _run_client(server, stubs)
        assert seen["welcome"] == "welcome"
        assert seen["errors"] == []
        assert seen["ok"] > 20
        assert seen["session"] == "closed by us"
        assert _cut_off(server) == []


async def _ping_in_bursts(server: Any, pki: TestPKI, burst: int, seconds: int) -> bool:
    """A burst of ``burst`` PINGs each second for ``seconds`` on a connection with an open
    call; True when the server sent it away. (Bursts, not an even rate: on a loaded
    machine a paced sender is not the rate it means to be.)"""
    async with h2_attacker(server.port, pki.client_ssl_context("mallet")) as attacker:
        await attacker.preface()
        stream_id, headers = attacker.headers("Transport")
        hello = pb.ClientEvent(hello=pb.Hello(instance_id="pinger-1")).SerializeToString()
        await attacker.send(headers + attacker.data(stream_id, grpc_message(hello)))
        for _ in range(seconds):
            try:
                await attacker.send(H2Attacker.ping() * burst)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                return True
            if await attacker.read_for(1.0):
                return True
        return attacker.goaway_code() is not None


async def test_pings_past_the_budget_get_goaway_and_pings_within_it_do_not(
    hostile_server: Any, pki: TestPKI
) -> None:
    # A stock client cannot be made to PING past the budget (grpc-core throttles its own
    # keepalive), so the abusive one is raw frames: 5 a second is served under a budget
    # of 20 (a burst of 20), 40 at once is sent away.
    with hostile_server(limits={"max_pings_per_second": 20}) as server, trio.fail_after(60):
        assert not await _ping_in_bursts(server, pki, 5, 4)
        assert _cut_off(server) == []
        assert await _ping_in_bursts(server, pki, 40, 4)
        assert [line.split("closed: ")[1] for line in _cut_off(server)] == ["too_many_pings"]
