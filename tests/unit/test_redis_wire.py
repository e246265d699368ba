"""RESP2 encoding and parsing of the Redis lane, over a real socket pair."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import trio
from redis.exceptions import NoScriptError, ResponseError

from mas.store.redis.wire import ProtocolError, WireSocket, _ReplyEnd, pack


def test_pack_encodes_like_redis_py() -> None:
    assert pack([("SET", b"k\r\n", 12), ("INCRBYFLOAT", "é", 0.5)]) == (
        b"*3\r\n$3\r\nSET\r\n$3\r\nk\r\n\r\n$2\r\n12\r\n"
        b"*3\r\n$11\r\nINCRBYFLOAT\r\n$2\r\n\xc3\xa9\r\n$3\r\n0.5\r\n"
    )


def test_pack_refuses_what_redis_py_refuses() -> None:
    with pytest.raises(TypeError, match="bool"):
        pack([("SET", "k", True)])
    with pytest.raises(TypeError, match="NoneType"):
        pack([("SET", "k", None)])  # type: ignore[arg-type]


@contextmanager
def _pair() -> Iterator[tuple[WireSocket, socket.socket]]:
    ours, theirs = socket.socketpair()
    try:
        yield WireSocket(ours), theirs
    finally:
        ours.close()
        theirs.close()


REPLIES: list[tuple[bytes, Any]] = [
    (b"+OK\r\n", b"OK"),
    (b":-42\r\n", -42),
    (b"$5\r\nhe\r\no\r\n", b"he\r\no"),
    (b"$0\r\n\r\n", b""),
    (b"$-1\r\n", None),
    (b"*-1\r\n", None),
    (b"*0\r\n", []),
    (b"*3\r\n:1\r\n*2\r\n$1\r\na\r\n$-1\r\n+x\r\n", [1, [b"a", None], b"x"]),
]


async def test_replies_are_parsed_however_the_bytes_arrive() -> None:
    stream = b"".join(raw for raw, _ in REPLIES)
    with trio.fail_after(10), _pair() as (wire, redis):
        async with trio.open_nursery() as nursery:

            async def dribble() -> None:
                redis.recv(65536)  # the pipeline
                for i in range(len(stream)):  # one byte at a time: every split point
                    redis.send(stream[i : i + 1])
                    await trio.lowlevel.checkpoint()

            nursery.start_soon(dribble)
            replies = await wire.round_trip([("PING",)] * len(REPLIES))
        assert replies == [value for _, value in REPLIES]
        assert not wire.stale()


async def test_error_replies_are_returned_as_exceptions() -> None:
    with trio.fail_after(10), _pair() as (wire, redis):
        redis.send(b"-NOSCRIPT No matching script\r\n-ERR wrong type\r\n:1\r\n")
        first, second, third = await wire.round_trip([("EVALSHA",), ("GET",), ("INCR",)])
    assert isinstance(first, NoScriptError)
    assert type(second) is ResponseError and str(second) == "ERR wrong type"
    assert third == 1


async def test_a_large_bulk_reply_and_a_reply_split_across_round_trips() -> None:
    big = bytes(range(256)) * 8192  # 2 MiB
    with trio.fail_after(10), _pair() as (wire, redis):
        async with trio.open_nursery() as nursery:

            async def answer() -> None:
                await trio.lowlevel.wait_readable(redis)
                redis.recv(65536)
                data = b"$%d\r\n%b\r\n:7\r\n" % (len(big), big)
                redis.setblocking(False)
                view = memoryview(data)
                while view:
                    try:
                        view = view[redis.send(view) :]
                    except BlockingIOError:
                        await trio.lowlevel.wait_writable(redis)

            nursery.start_soon(answer)
            assert await wire.round_trip([("GET",)]) == [big]
        # The reply to the next command was already read with the first: it is kept.
        assert await wire.round_trip([("INCR",)]) == [7]


async def test_garbage_is_a_protocol_error() -> None:
    with trio.fail_after(10), _pair() as (wire, redis):
        redis.send(b"?what\r\n")
        with pytest.raises(ProtocolError):
            await wire.round_trip([("PING",)])


async def test_a_closed_connection_is_stale_and_fails_a_round_trip() -> None:
    with trio.fail_after(10), _pair() as (wire, redis):
        redis.shutdown(socket.SHUT_WR)
        assert wire.stale()
        with pytest.raises(ConnectionError):
            await wire.round_trip([("PING",)])


def test_unsolicited_bytes_make_a_connection_stale() -> None:
    with _pair() as (wire, redis):
        assert not wire.stale()
        redis.send(b"+OK\r\n")
        assert wire.stale()


def test_the_end_of_a_reply_is_found_across_chunks_without_starting_over() -> None:
    reply = b"*3\r\n$5\r\nhello\r\n*2\r\n:1\r\n$-1\r\n-ERR x\r\n"
    trailing = b"+OK\r\n"  # the next reply, already received
    end = _ReplyEnd(0)
    buf = bytearray()
    for i, byte in enumerate(reply):
        assert end.scan(buf) is None, i
        buf.append(byte)
    buf += trailing
    assert end.scan(buf) == len(reply)
