"""Connections that hold a slot and do nothing, and too many connections of one client."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
import trio
from attack_harness import scaled, under_attack
from rawclient import (
    CallFailed,
    H2Attacker,
    h2_attacker,
    raw_client,
    refused_client,
    wait_until_closed,
)

from mas._proto import runtime_pb2 as pb
from mas.testing import TestPKI

MAX_LOG_LINES_PER_CONNECTION = 3


async def _hold(port: int, pki: TestPKI, preface: bool, closed: list[bool]) -> None:
    """Connect (TLS, and the HTTP/2 preface if asked), send nothing more, wait to be closed."""
    async with h2_attacker(port, pki.client_ssl_context("mallet")) as attacker:
        if preface:
            await attacker.preface()
        closed.append(await attacker.read_for(8.0))


async def test_silent_connections_are_closed_after_the_first_message_deadline(
    hostile_server: Any, pki: TestPKI
) -> None:
    count = scaled(100)  # of each kind: TLS only, and TLS plus the HTTP/2 preface
    with hostile_server(limits={"hello_timeout": 2.0, "idle_timeout": 2.0}) as server:
        closed: list[bool] = []

        async def attack() -> None:
            async with trio.open_nursery() as nursery:
                for n in range(2 * count):
                    nursery.start_soon(_hold, server.port, pki, n % 2 == 1, closed)

        with trio.fail_after(120):
            report = await under_attack("silent connections", server, pki, attack)
    assert closed.count(True) == 2 * count, "silent connections were kept open"
    assert report.log_lines < MAX_LOG_LINES_PER_CONNECTION * 2 * count


async def test_connection_idle_after_its_last_rpc_is_closed(
    hostile_server: Any, pki: TestPKI
) -> None:
    with hostile_server(limits={"idle_timeout": 1.0}) as server, trio.fail_after(20):
        async with raw_client(server.port, pki.client_ssl_context("mallet")) as client:
            await client.unary("GetState", pb.GetStateRequest(), pb.GetStateResponse)
            await wait_until_closed(client)


async def test_pings_do_not_keep_an_idle_connection_open(hostile_server: Any, pki: TestPKI) -> None:
    with hostile_server(limits={"hello_timeout": 1.0}) as server, trio.fail_after(20):
        async with h2_attacker(server.port, pki.client_ssl_context("mallet")) as attacker:
            await attacker.preface()
            closed = False
            with trio.move_on_after(5):
                while not closed:
                    try:
                        await attacker.send(H2Attacker.ping())
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                        break
                    closed = await attacker.read_for(0.2)
            assert closed or attacker.goaway_code() is not None


async def test_one_identity_cannot_hold_every_connection(hostile_server: Any, pki: TestPKI) -> None:
    with hostile_server(limits={"max_connections_per_identity": 4}) as server:

        async def attack() -> None:
            async with (
                raw_client(server.port, pki.client_ssl_context("mallet")) as c1,
                raw_client(server.port, pki.client_ssl_context("mallet")) as c2,
                raw_client(server.port, pki.client_ssl_context("mallet")) as c3,
                raw_client(server.port, pki.client_ssl_context("mallet")) as c4,
            ):
                for client in (c1, c2, c3, c4):
                    await client.unary("GetState", pb.GetStateRequest(), pb.GetStateResponse)
                async with refused_client(server.port, pki.client_ssl_context("mallet")) as c5:
                    with pytest.raises(CallFailed) as failed:
                        await c5.unary("GetState", pb.GetStateRequest(), pb.GetStateResponse)
                    assert (failed.value.code, failed.value.reason) == (
                        "RESOURCE_EXHAUSTED",
                        "too_many_connections",
                    )
            # Those four closed: mallet may connect again.
            async with raw_client(server.port, pki.client_ssl_context("mallet")) as again:
                await again.unary("GetState", pb.GetStateRequest(), pb.GetStateResponse)

        with trio.fail_after(60):
            await under_attack("connections of one identity", server, pki, attack)


async def test_one_address_cannot_hold_every_connection(hostile_server: Any, pki: TestPKI) -> None:
    # The probe's two connections count too: 2 + 3 of the attacker's fit under 5.
    with hostile_server(limits={"max_connections_per_address": 5}) as server:
        outcomes: list[bool] = []

        async def one() -> None:
            try:
                async with raw_client(server.port, pki.client_ssl_context("mallet")) as client:
                    await client.unary("GetState", pb.GetStateRequest(), pb.GetStateResponse)
                    outcomes.append(True)
                    await trio.sleep(2)
            except Exception:  # refused: the TLS handshake or the call fails
                outcomes.append(False)

        async def attack() -> None:
            await trio.sleep(1)  # the probe is connected
            async with trio.open_nursery() as nursery:
                for _ in range(6):
                    nursery.start_soon(one)

        with trio.fail_after(60):
            await under_attack("connections of one address", server, pki, attack)
    assert outcomes.count(True) == 3
