"""HTTP/2 abuse from an allowlisted client: floods, rapid reset, never reading.

Each test attacks a real ``mas serve`` with raw frames while a well-behaved agent pair
keeps doing request/reply, and bounds what the attack costs the server.
"""

from __future__ import annotations

import socket
from typing import Any

import anyio
import trio
from conftest import scaled, under_attack
from rawclient import GOAWAY, RST_STREAM, SETTINGS, H2Attacker, h2_attacker, h2_frame

from mas.testing import TestPKI

ENHANCE_YOUR_CALM = 0xB
MAX_LOG_LINES = 20  # lines one attacking connection may cost the server's log
MAX_RSS_GROWTH_KIB = 40 * 1024  # what any one attack may add to the server's RSS


def _shrink_receive_buffer(attacker: H2Attacker) -> None:
    """Make the kernel hold little of what the server sends us (we never read it)."""
    raw: Any = attacker.stream.extra(anyio.abc.SocketAttribute.raw_socket)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)


async def _send_within(attacker: H2Attacker, chunks: list[bytes], seconds: float) -> int:
    """Send ``chunks`` until done or ``seconds`` pass (a server that stops reading blocks
    us: that is the point); the number of chunks sent."""
    sent = 0
    with trio.move_on_after(seconds):
        for chunk in chunks:
            try:
                await attacker.send(chunk)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                break
            sent += 1
    return sent


async def test_client_that_never_reads_its_ping_acks_cannot_grow_server_memory(
    hostile_server: Any, pki: TestPKI
) -> None:
    pings = scaled(300_000)
    chunk = H2Attacker.ping() * 4_000
    with hostile_server(limits={"write_timeout": 2.0, "max_pings_per_second": 10**9}) as server:
        closed = False

        async def attack() -> None:
            nonlocal closed
            async with h2_attacker(server.port, pki.client_ssl_context("mallet")) as attacker:
                _shrink_receive_buffer(attacker)
                await attacker.preface()
                await _send_within(attacker, [chunk] * (pings // 4_000), 8.0)
                # Still not reading: the server gives up on us after write_timeout.
                with trio.move_on_after(6.0):
                    while not closed:
                        try:
                            await attacker.send(H2Attacker.ping())
                        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                            closed = True
                        await trio.sleep(0.1)

        with trio.fail_after(60):
            report = await under_attack("ping flood, never reading", server, pki, attack)
        assert closed, "the server kept a client that never reads"
        assert report.rss_growth_kib < MAX_RSS_GROWTH_KIB
        assert report.log_lines < MAX_LOG_LINES


async def test_ping_flood_gets_goaway(hostile_server: Any, pki: TestPKI) -> None:
    with hostile_server() as server:
        attacker_ref: list[H2Attacker] = []

        async def attack() -> None:
            async with h2_attacker(server.port, pki.client_ssl_context("mallet")) as attacker:
                attacker_ref.append(attacker)
                await attacker.preface()
                await _send_within(attacker, [H2Attacker.ping() * 1_000] * scaled(50), 5.0)
                await attacker.read_for(3.0)

        with trio.fail_after(60):
            report = await under_attack("ping flood", server, pki, attack)
        assert attacker_ref[0].goaway_code() == ENHANCE_YOUR_CALM
        assert report.log_lines < MAX_LOG_LINES


async def test_settings_flood_gets_goaway(hostile_server: Any, pki: TestPKI) -> None:
    with hostile_server() as server:
        attacker_ref: list[H2Attacker] = []

        async def attack() -> None:
            async with h2_attacker(server.port, pki.client_ssl_context("mallet")) as attacker:
                attacker_ref.append(attacker)
                await attacker.preface()
                flood = h2_frame(SETTINGS, 0, 0, b"") * 1_000
                await _send_within(attacker, [flood] * scaled(50), 5.0)
                await attacker.read_for(3.0)

        with trio.fail_after(60):
            report = await under_attack("settings flood", server, pki, attack)
        assert attacker_ref[0].goaway_code() == ENHANCE_YOUR_CALM
        assert report.log_lines < MAX_LOG_LINES


async def test_rapid_reset_is_cut_off_with_goaway_and_logs_one_line(
    hostile_server: Any, pki: TestPKI
) -> None:
    pairs = scaled(20_000)
    with hostile_server() as server:
        attacker_ref: list[H2Attacker] = []

        async def attack() -> None:
            async with h2_attacker(server.port, pki.client_ssl_context("mallet")) as attacker:
                attacker_ref.append(attacker)
                await attacker.preface()
                chunks = []
                for _ in range(pairs // 100):
                    batch = bytearray()
                    for _ in range(100):
                        stream_id, headers = attacker.headers("Transport")
                        batch += headers + attacker.rst(stream_id)
                    chunks.append(bytes(batch))
                await _send_within(attacker, chunks, 10.0)
                await attacker.read_for(3.0)

        with trio.fail_after(90):
            report = await under_attack("rapid reset", server, pki, attack)
        assert attacker_ref[0].goaway_code() == ENHANCE_YOUR_CALM
        assert report.log_lines < MAX_LOG_LINES
        assert report.cpu_seconds < 5.0
        assert report.rss_growth_kib < MAX_RSS_GROWTH_KIB


async def test_reset_streams_are_not_handler_failures(hostile_server: Any, pki: TestPKI) -> None:
    # Under the stream limit: each reset stream is simply forgotten, no traceback, no GOAWAY.
    with hostile_server() as server:

        async def attack() -> None:
            async with h2_attacker(server.port, pki.client_ssl_context("mallet")) as attacker:
                await attacker.preface()
                for _ in range(20):
                    batch = bytearray()
                    for _ in range(10):
                        stream_id, headers = attacker.headers("GetState")
                        batch += headers + attacker.rst(stream_id)
                    await attacker.send(bytes(batch))
                    await attacker.read_for(0.05)
                assert attacker.goaway_code() is None
                kinds = {kind for kind, *_ in attacker.frames()}
                assert GOAWAY not in kinds

        with trio.fail_after(60):
            report = await under_attack("reset under the limit", server, pki, attack)
        assert report.log_lines < MAX_LOG_LINES
        assert not [line for line in server.log() if "ERROR" in line]
        _ = RST_STREAM
