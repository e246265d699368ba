"""Messages declared and never finished: bounded in memory (GOAWAY) and in time (reset)."""

from __future__ import annotations

from typing import Any

import anyio
import trio
from attack_harness import scaled, under_attack
from rawclient import RST_STREAM, H2Attacker, grpc_message, h2_attacker

from mas.testing import TestPKI

FRAME = 16_384  # bytes of DATA per frame (the HTTP/2 default frame size)


def _unfinished(attacker: H2Attacker, method: str, declared: int, sent: int) -> bytes:
    """A stream opening ``method`` and sending ``sent`` bytes of a ``declared``-byte message."""
    stream_id, headers = attacker.headers(method)
    body = grpc_message(b"\0" * (sent - 5), length=declared)
    frames = [attacker.data(stream_id, body[at : at + FRAME]) for at in range(0, len(body), FRAME)]
    return headers + b"".join(frames)


async def test_unfinished_messages_past_the_connection_budget_get_goaway(
    hostile_server: Any, pki: TestPKI
) -> None:
    streams = min(60, scaled(32))  # under max_concurrent_streams (64)
    with hostile_server() as server:
        closed: list[bool] = []

        async def attack() -> None:
            async with h2_attacker(server.port, pki.client_ssl_context("mallet")) as attacker:
                await attacker.preface(window=2**24)
                with trio.move_on_after(10):
                    for _ in range(streams):
                        # 1 MiB of a 2 MiB message (the frame limit is 2 MiB + 64 KiB).
                        try:
                            await attacker.send(
                                _unfinished(attacker, "Transport", 2 << 20, 1 << 20)
                            )
                        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                            break
                # The server closed the connection (a GOAWAY first, which the reset of a
                # connection with unread data may destroy before we read it).
                closed.append(await attacker.read_for(3.0))

        with trio.fail_after(60):
            report = await under_attack("unfinished messages", server, pki, attack)
    assert closed == [True]
    assert report.rss_growth_kib < 40 * 1024  # max_buffered_bytes is 8 MiB
    assert report.log_lines < 20


async def test_unfinished_unary_requests_are_dropped_at_their_deadline(
    hostile_server: Any, pki: TestPKI
) -> None:
    streams = 16
    with hostile_server(limits={"hello_timeout": 1.0}) as server, trio.fail_after(30):
        async with h2_attacker(server.port, pki.client_ssl_context("mallet")) as attacker:
            await attacker.preface(window=2**24)
            for _ in range(streams):
                await attacker.send(_unfinished(attacker, "GetState", 1 << 20, 256 << 10))
            await attacker.read_for(3.0)
            # Each stream got its status at the deadline, then a reset: the server keeps
            # nothing of what the client may still send on it.
            reset = {stream for kind, _f, stream, _p in attacker.frames() if kind == RST_STREAM}
            assert len(reset) == streams
