"""Messages declared and never finished: bounded in memory (GOAWAY) and in time (reset)."""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any

import anyio
import hpack
import trio
from attack_harness import scaled, under_attack
from rawclient import HEADERS, RST_STREAM, H2Attacker, grpc_message, h2_attacker

from mas._proto import runtime_pb2 as pb
from mas.testing import TestPKI

FRAME = 16_384  # bytes of DATA per frame (the HTTP/2 default frame size)


def _unfinished(attacker: H2Attacker, method: str, declared: int, sent: int) -> bytes:
    """A stream opening ``method`` and sending ``sent`` bytes of a ``declared``-byte message."""
    stream_id, headers = attacker.headers(method)
    return headers + _partial(attacker, stream_id, declared, sent)


def _partial(attacker: H2Attacker, stream_id: int, declared: int, sent: int) -> bytes:
    """DATA frames with the first ``sent`` bytes of a ``declared``-byte message."""
    body = grpc_message(b"\0" * (sent - 5), length=declared)
    frames = [attacker.data(stream_id, body[at : at + FRAME]) for at in range(0, len(body), FRAME)]
    return b"".join(frames)


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


def _statuses(attacker: H2Attacker) -> dict[int, tuple[str, str]]:
    """Each stream's (grpc-status, grpc-message), from the header blocks read so far."""
    decoder = hpack.Decoder()
    statuses = {}
    for kind, _flags, stream_id, payload in attacker.frames():
        if kind == HEADERS:
            fields = dict(decoder.decode(payload))
            if "grpc-status" in fields:
                statuses[stream_id] = (fields["grpc-status"], fields.get("grpc-message", ""))
    return statuses


async def test_messages_left_unfinished_on_open_sessions_are_refused_and_freed(
    hostile_server: Any, pki: TestPKI
) -> None:
    # Sessions that said Hello, then began a 2 MiB message each and never finished it:
    # before, held for as long as the session stayed open (no byte budget is exceeded:
    # 6 MiB per connection). Three rounds of 4 connections, all kept open.
    rounds, connections, streams = 3, scaled(4), 3
    with hostile_server(limits={"unfinished_message_timeout": 2.0}) as server:
        seen: list[dict[int, tuple[str, str]]] = []

        async def hold(attacker: H2Attacker, name: str) -> None:
            await attacker.preface(window=2**24)
            for n in range(streams):
                stream_id, headers = attacker.headers("Transport")
                hello = pb.ClientEvent(hello=pb.Hello(instance_id=f"{name}-{n}"))
                await attacker.send(
                    headers
                    + attacker.data(stream_id, grpc_message(hello.SerializeToString()))
                    + _partial(attacker, stream_id, 2 << 20, (2 << 20) - 1)
                )

        async def attack() -> None:
            async with AsyncExitStack() as stack:
                attackers = []
                for r in range(rounds):
                    for c in range(connections):
                        attacker = await stack.enter_async_context(
                            h2_attacker(server.port, pki.client_ssl_context("mallet"))
                        )
                        attackers.append(attacker)
                        await hold(attacker, f"m{r}-{c}")
                    await trio.sleep(3.0)  # past unfinished_message_timeout
                for attacker in attackers:
                    await attacker.read_for(0.2)
                    seen.append(_statuses(attacker))

        with trio.fail_after(120):
            report = await under_attack("unfinished messages on open sessions", server, pki, attack)
    assert len(seen) == rounds * connections
    for statuses in seen:
        assert list(statuses.values()) == [("4", "unfinished_message")] * streams
    # One round's worth at a time (24 MiB), not all three rounds' (72 MiB).
    assert report.rss_growth_kib < 48 * 1024
    assert report.log_lines < 20
