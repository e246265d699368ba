"""The metrics HTTP server against slow, greedy and malformed clients (real loopback TCP)."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
import trio.testing

from mas.server.http import MAX_CONNECTIONS, READ_TIMEOUT, HttpServer, Response


async def _handler(path: str) -> Response | None:
    return Response(200, b"fine\n") if path == "/metrics" else None


@asynccontextmanager
async def serving(clock: trio.testing.MockClock | None = None) -> AsyncIterator[HttpServer]:
    server = HttpServer(_handler)
    async with trio.open_nursery() as nursery:
        threshold = None if clock is None else clock.autojump_threshold
        if clock is not None:  # getaddrinfo runs in a thread: no jumps meanwhile
            clock.autojump_threshold = math.inf
        await nursery.start(server.serve, "127.0.0.1", 0)
        if clock is not None and threshold is not None:
            clock.autojump_threshold = threshold
        yield server
        nursery.cancel_scope.cancel()


async def _connect(server: HttpServer) -> trio.SocketStream:
    assert server.address is not None
    sock = trio.socket.socket()
    await sock.connect(server.address)
    return trio.SocketStream(sock)


async def _answer(stream: trio.SocketStream) -> bytes:
    data = b""
    while chunk := await stream.receive_some(65536):
        data += chunk
    return data


async def _get(server: HttpServer, path: str = "/metrics") -> bytes:
    stream = await _connect(server)
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        return await _answer(stream)


async def test_a_get_is_answered_and_the_connection_closed() -> None:
    with trio.fail_after(10):
        async with serving() as server:
            answer = await _get(server)
            assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"fine\n")
            assert (await _get(server, "/elsewhere")).startswith(b"HTTP/1.1 404")


async def test_a_client_that_sends_half_a_head_is_cut_off(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(READ_TIMEOUT + 5):
        async with serving(autojump_clock) as server:
            stream = await _connect(server)
            async with stream:
                await stream.send_all(b"GET /metrics HTTP/1.1\r\nHost:")  # and then nothing
                began = trio.current_time()
                assert await _answer(stream) == b""
                assert READ_TIMEOUT <= trio.current_time() - began < READ_TIMEOUT + 1
            assert (await _get(server)).startswith(b"HTTP/1.1 200")


async def test_a_head_that_never_ends_is_refused() -> None:
    with trio.fail_after(10):
        async with serving() as server:
            stream = await _connect(server)
            async with stream:
                await stream.send_all(b"GET /metrics HTTP/1.1\r\n" + b"X: y\r\n" * 5000)
                assert (await _answer(stream)).startswith(b"HTTP/1.1 431")


async def test_connections_past_the_cap_are_closed_and_the_rest_served() -> None:
    with trio.fail_after(10):
        async with serving() as server:
            idle = [await _connect(server) for _ in range(MAX_CONNECTIONS)]
            await trio.testing.wait_all_tasks_blocked()
            assert server.active == MAX_CONNECTIONS
            extra = await _connect(server)
            async with extra:
                assert await _answer(extra) == b""  # closed at once
            assert server.refused == 1
            for stream in idle:
                await stream.aclose()
            await trio.testing.wait_all_tasks_blocked()
            assert server.active == 0
            assert (await _get(server)).startswith(b"HTTP/1.1 200")
