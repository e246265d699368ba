"""Header blocks that are too large or hold too many fields: GOAWAY, one log line, no growth.

Every attack runs against a real ``mas serve`` while the probe keeps doing request/reply.
A header block cannot be refused on its stream alone once it is not decoded in full (the
connection's HPACK state is then unknown), so each limit ends the connection with GOAWAY
(``ENHANCE_YOUR_CALM``, the reason in its debug data) and one log line.
"""

from __future__ import annotations

import contextlib
from typing import Any

import anyio
import hpack
import trio
from attack_harness import scaled, under_attack
from rawclient import (
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADERS,
    SERVICE,
    H2Attacker,
    grpc_message,
    h2_attacker,
    h2_frame,
)

from mas._proto import runtime_pb2 as pb
from mas.testing import TestPKI

CONTINUATION = 0x9
ENHANCE_YOUR_CALM = 0xB
FRAME = 16_384  # bytes per frame: the HTTP/2 default, which every peer must accept
MAX_LOG_LINES = 20
MAX_RSS_GROWTH_KIB = 40 * 1024


def _request_headers(*extra: tuple[str, str]) -> list[tuple[str, str]]:
    return [
        (":method", "POST"),
        (":scheme", "https"),
        (":path", f"/{SERVICE}/GetState"),
        (":authority", "localhost"),
        ("content-type", "application/grpc+proto"),
        ("te", "trailers"),
        *extra,
    ]


def _encode(headers: list[tuple[str, str]]) -> bytes:
    # Without Huffman coding: hpack's pure-Python coder takes seconds for 100 KB, and the
    # probe shares this process.
    block: bytes = hpack.Encoder().encode(headers, huffman=False)
    return block


def _header_frames(stream_id: int, block: bytes, *, end_headers: bool = True) -> bytes:
    """``block`` as one HEADERS frame and as many CONTINUATION frames as it takes."""
    chunks = [block[at : at + FRAME] for at in range(0, len(block), FRAME)] or [b""]
    frames = bytearray()
    for n, chunk in enumerate(chunks):
        last = n == len(chunks) - 1
        flags = END_HEADERS if last and end_headers else 0
        frames += h2_frame(HEADERS if n == 0 else CONTINUATION, flags, stream_id, chunk)
    return bytes(frames)


def _goaway_reason(attacker: H2Attacker) -> tuple[int, bytes] | None:
    """The (error code, debug data) of the GOAWAY read so far."""
    for kind, _flags, _stream, payload in attacker.frames():
        if kind == GOAWAY:
            return int.from_bytes(payload[4:8], "big"), payload[8:]
    return None


def _closed_lines(log: list[str], reason: str) -> list[str]:
    return [line for line in log if f"closed: {reason}" in line]


async def _send(attacker: H2Attacker, data: bytes) -> None:
    """Send, as far as the server still reads (it may close the connection under us)."""
    with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        await attacker.send(data)


async def test_header_block_over_the_limit_gets_goaway_with_its_reason(
    hostile_server: Any, pki: TestPKI
) -> None:
    # 100 KB of one header value, in HEADERS + CONTINUATION frames (the old bound: 64 KiB
    # decoded, or 4 MiB of frames buffered before anything was decoded).
    block = _encode(_request_headers(("x-big", "b" * 100_000)))
    with hostile_server() as server:
        seen: list[Any] = []

        async def attack() -> None:
            async with h2_attacker(server.port, pki.client_ssl_context("mallet")) as attacker:
                await attacker.preface()
                await _send(attacker, _header_frames(1, block))
                seen.append(await attacker.read_for(3.0))
                seen.append(_goaway_reason(attacker))

        with trio.fail_after(60):
            report = await under_attack("huge header", server, pki, attack)
        closed, goaway = seen
        assert closed
        # A connection closed with unread input may be reset before we read the GOAWAY.
        assert goaway in ((ENHANCE_YOUR_CALM, b"headers_too_large"), None)
        assert len(_closed_lines(server.log(), "headers_too_large")) == 1
        assert report.log_lines < MAX_LOG_LINES


async def test_hpack_bomb_is_stopped_at_the_decoded_limit_before_settings_are_acked(
    hostile_server: Any, pki: TestPKI
) -> None:
    # One 4,000-byte value put in the HPACK table, then referenced 100 times at one byte
    # each: a 4 KB block that decodes to 400 KB. The client never acknowledges the
    # server's SETTINGS (h2 applied its 8 KiB list size only once they were acked).
    block = _encode(_request_headers(*[("x-bomb", "v" * 4_000)] * 100))
    assert len(block) < 5_000
    with hostile_server() as server:
        seen: list[Any] = []

        async def attack() -> None:
            async with h2_attacker(server.port, pki.client_ssl_context("mallet")) as attacker:
                await attacker.preface()
                await _send(attacker, _header_frames(1, block))
                seen.append(await attacker.read_for(3.0))
                seen.append(_goaway_reason(attacker))

        with trio.fail_after(60):
            report = await under_attack("hpack bomb", server, pki, attack)
        closed, goaway = seen
        assert closed
        if goaway is not None:  # h2's own GOAWAY: the code, without debug data
            assert goaway[0] == ENHANCE_YOUR_CALM
        assert len(_closed_lines(server.log(), "headers_too_large")) == 1
        assert report.log_lines < MAX_LOG_LINES


async def test_continuation_flood_is_cut_off_at_one_header_blocks_worth(
    hostile_server: Any, pki: TestPKI
) -> None:
    # Connections that each begin a header block and send CONTINUATION frames without
    # END_HEADERS: 63 frames of 64 KiB (4 MiB each) were held before anything was
    # decoded, for as long as the connection stayed; now each is closed at 16 KiB.
    connections = scaled(16)
    frame = 2**16  # the server's advertised frame size
    with hostile_server() as server:
        closed: list[bool] = []

        async def one() -> None:
            async with h2_attacker(server.port, pki.client_ssl_context("mallet")) as attacker:
                await attacker.preface()
                await _send(attacker, h2_frame(HEADERS, 0, 1, b"\x82"))  # :method GET
                for _ in range(63):
                    await _send(attacker, h2_frame(CONTINUATION, 0, 1, b"\0" * frame))
                closed.append(await attacker.read_for(4.0))

        async def attack() -> None:
            async with trio.open_nursery() as nursery:
                for _ in range(connections):
                    nursery.start_soon(one)

        with trio.fail_after(90):
            report = await under_attack("continuation flood", server, pki, attack)
        assert closed == [True] * connections
        assert len(_closed_lines(server.log(), "headers_too_large")) == connections
        assert report.rss_growth_kib < MAX_RSS_GROWTH_KIB
        assert report.log_lines < MAX_LOG_LINES + connections


async def test_empty_continuation_frames_are_cut_off_too(hostile_server: Any, pki: TestPKI) -> None:
    with hostile_server() as server, trio.fail_after(30):
        async with h2_attacker(server.port, pki.client_ssl_context("mallet")) as attacker:
            await attacker.preface()
            flood = h2_frame(HEADERS, 0, 1, b"\x82") + h2_frame(CONTINUATION, 0, 1) * 10_000
            await _send(attacker, flood)
            assert await attacker.read_for(3.0)
            assert _goaway_reason(attacker) in ((ENHANCE_YOUR_CALM, b"headers_too_large"), None)
        assert len(_closed_lines(server.log(), "headers_too_large")) == 1


async def test_many_headers_get_goaway_and_the_connection_logs_one_line(
    hostile_server: Any, pki: TestPKI
) -> None:
    # 150 small fields (6 KB decoded, under the size limit) on each of many streams: past
    # max_headers (100), the first of them ends the connection.
    # Encoded before the attack (HPACK state starts fresh on the attacking connection), so
    # that encoding does not slow the probe, which runs in this process too.
    encoder = H2Attacker(None)
    fields = [(f"x-h{n}", "1") for n in range(150)]
    flood = b"".join(encoder.headers("GetState", extra=fields)[1] for _ in range(scaled(50)))
    with hostile_server() as server:
        seen: list[Any] = []

        async def attack() -> None:
            async with h2_attacker(server.port, pki.client_ssl_context("mallet")) as attacker:
                await attacker.preface()
                await _send(attacker, flood)
                seen.append(await attacker.read_for(3.0))
                seen.append(_goaway_reason(attacker))

        with trio.fail_after(60):
            report = await under_attack("many headers", server, pki, attack)
        closed, goaway = seen
        assert closed
        assert goaway in ((ENHANCE_YOUR_CALM, b"too_many_headers"), None)
        assert len(_closed_lines(server.log(), "too_many_headers")) == 1
        assert report.log_lines < MAX_LOG_LINES


async def test_headers_within_the_limits_are_served(hostile_server: Any, pki: TestPKI) -> None:
    # 90 fields and 12 KB of metadata, in CONTINUATION frames: a legitimate, if heavy, call.
    with hostile_server(limits={"max_headers": 100, "max_header_bytes": 16_384}) as server:
        async with h2_attacker(server.port, pki.client_ssl_context("mallet")) as attacker:
            await attacker.preface()
            fields = [(f"x-h{n}", "v" * 100) for n in range(84)]
            block = _encode(_request_headers(*fields))
            assert len(block) > 4_096
            half = len(block) // 2
            body = grpc_message(pb.GetStateRequest().SerializeToString())
            await attacker.send(
                h2_frame(HEADERS, 0, 1, block[:half])
                + h2_frame(CONTINUATION, END_HEADERS, 1, block[half:])
                + attacker.data(1, body, end_stream=True)
            )
            await attacker.read_for(2.0)
            # The call was answered (its trailers end the stream), the connection goes on.
            frames = attacker.frames()
            assert any(kind == HEADERS and flags & END_STREAM for kind, flags, *_ in frames)
            assert _goaway_reason(attacker) is None
        assert not _closed_lines(server.log(), "headers")
