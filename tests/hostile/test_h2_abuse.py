"""HTTP/2 abuse from an allowlisted client: floods, rapid reset, never reading.

Each test attacks a real ``mas serve`` with raw frames while a well-behaved agent pair
keeps doing request/reply, and bounds what the attack costs the server.
"""

from __future__ import annotations

import json
import socket
from typing import Any

import anyio
import trio
from attack_harness import scaled, under_attack
from rawclient import (
    GOAWAY,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    H2Attacker,
    grpc_message,
    h2_attacker,
    h2_frame,
    raw_client,
)

from mas._proto import runtime_pb2 as pb
from mas.testing import TestPKI

ENHANCE_YOUR_CALM = 0xB
MAX_LOG_LINES = 20  # lines one attacking connection may cost the server's log
MAX_RSS_GROWTH_KIB = 40 * 1024  # what any one attack may add to the server's RSS


def _assert_cut_off(attacker: H2Attacker, log: list[str], reason: str) -> None:
    """The server closed the connection for ``reason``, saying so once."""
    # The GOAWAY (ENHANCE_YOUR_CALM) goes out first, but a connection closed with unread
    # input is reset, and the reset may destroy it before we read it: allow for that.
    assert attacker.goaway_code() in (ENHANCE_YOUR_CALM, None)
    assert len([line for line in log if f"closed: {reason}" in line]) == 1


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
    # The 600,000 PINGs with MAS_HOSTILE_SCALE=2. The short form leaves most acks
    # to the kernel's buffers, so it bounds memory and log only; the next test is the
    # short one that overflows them.
    pings = scaled(300_000)
    chunk = H2Attacker.ping() * 4_000
    with hostile_server(limits={"write_timeout": 2.0, "max_pings_per_second": 10**9}) as server:

        async def attack() -> None:
            async with h2_attacker(server.port, pki.client_ssl_context("mallet")) as attacker:
                _shrink_receive_buffer(attacker)
                await attacker.preface()
                await _send_within(attacker, [chunk] * (pings // 4_000), 20.0)

        with trio.fail_after(60):
            report = await under_attack("ping flood, never reading", server, pki, attack)
        assert report.rss_growth_kib < MAX_RSS_GROWTH_KIB
        assert report.log_lines < MAX_LOG_LINES


async def test_client_that_never_reads_large_answers_is_read_no_further_and_cut_off(
    hostile_server: Any, pki: TestPKI
) -> None:
    calls = scaled(40)  # each answered with 900 KB: 36 MB the client never reads
    with hostile_server(limits={"write_timeout": 2.0}) as server:
        async with raw_client(server.port, pki.client_ssl_context("mallet")) as client:
            big = '"' + "s" * 900_000 + '"'
            await client.unary(
                "UpdateState", pb.UpdateStateRequest(updates={"big": big}), pb.UpdateStateResponse
            )
        received: list[int] = []

        async def attack() -> None:
            async with h2_attacker(server.port, pki.client_ssl_context("mallet")) as attacker:
                _shrink_receive_buffer(attacker)
                await attacker.preface(window=2**31 - 1)
                grant = (2**31 - 1 - 65_535).to_bytes(4, "big")
                await attacker.send(h2_frame(WINDOW_UPDATE, 0, 0, grant))
                request = grpc_message(pb.GetStateRequest().SerializeToString())
                for _ in range(calls):
                    stream_id, headers = attacker.headers("GetState")
                    sent = await _send_within(
                        attacker, [headers + attacker.data(stream_id, request, end_stream=True)], 5
                    )
                    if not sent:
                        break
                await trio.sleep(5)  # not reading, past write_timeout
                await attacker.read_for(3)  # now read what the server still had for us
                received.append(len(attacker.received))

        with trio.fail_after(60):
            report = await under_attack("large answers, never reading", server, pki, attack)
        # The server gave up on the answers (the RPCs end as slow consumers, or the whole
        # connection as a slow reader): what it had queued for us is bounded by the kernel's
        # buffers and max_output_bytes, not the 36 MB asked for.
        assert received[0] < 12 * 1024 * 1024
        # Each open RPC may hold its answer (at most max_concurrent_streams of them); the
        # connection holds no more than max_output_bytes besides.
        assert report.rss_growth_kib < 64 * 1024
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
        _assert_cut_off(attacker_ref[0], server.log(), "too_many_pings")
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
        _assert_cut_off(attacker_ref[0], server.log(), "too_many_settings")
        assert report.log_lines < MAX_LOG_LINES


async def test_rapid_reset_is_cut_off_with_goaway_and_logs_one_line(
    hostile_server: Any, pki: TestPKI
) -> None:
    pairs = scaled(20_000)
    # Encoded before the attack (HPACK state starts fresh on the attacking connection), so
    # that encoding them does not slow the probe, which runs in this process too.
    encoder = H2Attacker(None)
    chunks = []
    for _ in range(pairs // 100):
        batch = bytearray()
        for _ in range(100):
            stream_id, headers = encoder.headers("Transport")
            batch += headers + encoder.rst(stream_id)
        chunks.append(bytes(batch))
    with hostile_server() as server:
        attacker_ref: list[H2Attacker] = []

        async def attack() -> None:
            async with h2_attacker(server.port, pki.client_ssl_context("mallet")) as attacker:
                attacker_ref.append(attacker)
                await attacker.preface()
                await _send_within(attacker, chunks, 10.0)
                await attacker.read_for(3.0)

        with trio.fail_after(90):
            report = await under_attack("rapid reset", server, pki, attack)
        _assert_cut_off(attacker_ref[0], server.log(), "too_many_streams")
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


async def test_session_that_never_reads_is_cut_off_and_loses_nothing(
    hostile_server: Any, pki: TestPKI
) -> None:
    messages = scaled(200)
    payload = json.dumps({"text": "x" * 60_000})  # 200 of them: 12 MB, more than buffers hold
    permissions = {"type": "allow", "sender": "mallet", "targets": ["sink"]}
    with hostile_server(
        agents=("sink",),
        limits={"write_timeout": 2.0, "max_message_bytes": 65_536, "prefetch": 200},
        permissions_extra=[permissions],
    ) as server:
        delivered: set[str] = set()

        async def attack() -> None:
            async with h2_attacker(server.port, pki.client_ssl_context("sink")) as sink:
                _shrink_receive_buffer(sink)
                await sink.preface(window=2**31 - 1)
                # The whole connection window too: only TCP can hold the server back.
                await sink.send(
                    h2_frame(WINDOW_UPDATE, 0, 0, (2**31 - 1 - 65_535).to_bytes(4, "big"))
                )
                stream_id, headers = sink.headers("Transport")
                hello = pb.ClientEvent(hello=pb.Hello(instance_id="sink1")).SerializeToString()
                await sink.send(headers + sink.data(stream_id, grpc_message(hello)))
                async with raw_client(server.port, pki.client_ssl_context("mallet")) as client:
                    session = await client.transport()
                    await session.hello("mallet1")
                    for _ in range(messages):
                        result = await session.call(
                            "send", target_id="sink", message_type="m", data_json=payload
                        )
                        assert not result.HasField("error"), result
                # Never reading: the server gives the connection up after write_timeout.
                assert await sink.read_for(0) is False
                with trio.fail_after(20):
                    while "slow_" not in "\n".join(server.log()):  # noqa: ASYNC110 - a log file
                        await trio.sleep(0.1)
            # A sink that reads gets every message (at least once).
            async with raw_client(server.port, pki.client_ssl_context("sink")) as client:
                reader = await client.transport()
                await reader.hello("sink2")
                with trio.fail_after(30):
                    while len(delivered) < messages:
                        delivery = await reader.next_delivery()
                        delivered.add(json.loads(delivery.envelope_json)["message_id"])
                        await reader.send(ack=pb.Ack(delivery_id=delivery.delivery_id))

        with trio.fail_after(90):
            report = await under_attack("session never reading", server, pki, attack)
        assert len(delivered) == messages
        # The queue itself holds 12 MB of accepted messages; in flight to the sink at most
        # prefetch x message size more, whatever the sink does.
        assert report.rss_growth_kib < 100 * 1024
        assert report.log_lines < MAX_LOG_LINES
