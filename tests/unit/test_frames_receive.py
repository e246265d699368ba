"""Reading DATA frames without h2 gives exactly what h2 and purerpc give.

Two server connections read the same bytes, one through purerpc's and h2's own path, one
through ``mas._frames.receive_frames`` (``FastConnection``; the server's
``_LimitedConnection`` with and without it): the events, the flow-control windows, the
stream byte counts and what each connection writes back must be the same, whatever the
frames are and wherever the reads cut them.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from purerpc.grpclib.config import GRPCConfiguration
from purerpc.grpclib.connection import GRPCConnection

from mas import _frames
from mas._purerpc import FastConnection
from mas.server import transport

_HEADERS = [
    (":method", "POST"),
    (":scheme", "https"),
    (":path", "/s/m"),
    (":authority", "x"),
    ("content-type", "application/grpc"),
    ("te", "trailers"),
]


def _message(payload: bytes, compressed: bool = False) -> bytes:
    if compressed:
        payload = zlib.compress(payload)
    return struct.pack(">?I", compressed, len(payload)) + payload


def _describe(events: list[Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(type(e).__name__, dict(vars(e))) for e in events]


def _state(connection: GRPCConnection) -> Any:
    h2_connection = connection.h2_connection
    streams = {
        stream_id: (
            stream.state_machine.state,
            stream._inbound_window_manager.current_window_size,
            stream._inbound_window_manager._bytes_processed,
            stream._actual_content_length,
        )
        for stream_id, stream in h2_connection.streams.items()
    }
    window = h2_connection._inbound_flow_control_window_manager
    return (
        h2_connection.state_machine.state,
        window.current_window_size,
        window._bytes_processed,
        streams,
        h2_connection.incoming_buffer.data,
    )


class _StockLimited(transport._LimitedConnection):
    """The server's connection reading every frame through h2."""

    def receive_data(self, data: bytes, now: float = 0.0) -> list[Any]:
        original = transport.receive_frames
        transport.receive_frames = lambda h2c, chunk: list(h2c.receive_data(chunk))
        try:
            return super().receive_data(data, now)
        finally:
            transport.receive_frames = original


class _StockLimitedWholeMessages(_StockLimited):
    def _data_received(self, event: Any) -> list[Any]:
        original = transport.whole_messages_of
        transport.whole_messages_of = lambda event, buffer: None
        try:
            return super()._data_received(event)
        finally:
            transport.whole_messages_of = original


def _pair(kind: str) -> tuple[GRPCConnection, GRPCConnection]:
    config = GRPCConfiguration(client_side=False, max_message_length=4096)
    if kind == "purerpc":
        return GRPCConnection(config), FastConnection(config)
    return _StockLimitedWholeMessages(config, 10), transport._LimitedConnection(config, 10)


def _client() -> h2.connection.H2Connection:
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    return client


def _read(connection: GRPCConnection, data: bytes) -> tuple[Any, Any]:
    """The events of one read (or the error it raised), and the connection's state after."""
    try:
        if isinstance(connection, transport._LimitedConnection):
            events: Any = _describe(connection.receive_data(data, 0.0))
        else:
            events = _describe(connection.receive_data(data))
    except Exception as exc:  # compared below: the same error from both
        events = type(exc)
    for _, fields in events if isinstance(events, list) else ():
        if "flow_controlled_length" in fields and fields.get("stream_id"):
            connection.acknowledge_received_data(
                fields["stream_id"], fields["flow_controlled_length"]
            )
    return events, _state(connection)


# One client action: (kind, stream index, size, extra).
_ACTIONS = st.lists(
    st.tuples(
        st.sampled_from(["open", "data", "split", "padded", "end", "reset", "ping", "gzip"]),
        st.integers(0, 2),
        st.integers(0, 3000),
        st.integers(1, 40),
    ),
    min_size=1,
    max_size=25,
)


def _client_bytes(actions: list[tuple[str, int, int, int]]) -> bytes:
    """What a client sends for ``actions`` (actions on a stream not open are skipped)."""
    client = _client()
    opened: dict[int, int] = {}  # stream index -> id
    ended: set[int] = set()
    for kind, index, size, extra in actions:
        payload = bytes((size + i) % 256 for i in range(size))
        stream_id = opened.get(index)
        if kind == "open":
            if stream_id is None:
                stream_id = client.get_next_available_stream_id()
                client.send_headers(stream_id, _HEADERS)
                opened[index] = stream_id
            continue
        if kind == "ping":
            client.ping(b"12345678")
            continue
        if stream_id is None or stream_id in ended:
            continue
        if kind == "reset":
            client.reset_stream(stream_id)
            ended.add(stream_id)
            continue
        message = _message(payload, compressed=kind == "gzip")
        room = min(client.local_flow_control_window(stream_id), client.max_outbound_frame_size)
        if len(message) > room:
            continue
        if kind == "split":  # one message over several frames
            # (an odd ``extra``: inside the 5-byte prefix)
            cut = extra % 5 if extra % 2 else len(message) * extra // 41
            client.send_data(stream_id, message[:cut])
            client.send_data(stream_id, message[cut:])
        elif kind == "padded":
            client.send_data(stream_id, message, pad_length=extra)
        else:
            client.send_data(stream_id, message, end_stream=kind == "end")
            if kind == "end":
                ended.add(stream_id)
    return bytes(client.data_to_send())


def _frames_of(data: bytes) -> list[bytes]:
    """``data`` (after the client's preamble) cut into whole frames."""
    frames = []
    offset = len(_PREAMBLE)
    while offset < len(data):
        size = int.from_bytes(data[offset : offset + 3], "big")
        frames.append(data[offset : offset + 9 + size])
        offset += 9 + size
    return frames


_PREAMBLE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


@settings(max_examples=300, deadline=None)
@given(
    actions=_ACTIONS,
    groups=st.lists(st.tuples(st.integers(1, 4), st.integers(0, 60)), max_size=30),
    kind=st.sampled_from(["purerpc", "server"]),
)
def test_every_read_gives_what_h2_gives(
    actions: list[tuple[str, int, int, int]], groups: list[tuple[int, int]], kind: str
) -> None:
    """Reads of a few whole frames each, some cut inside a frame (``cut`` bytes short)."""
    data = _client_bytes(actions)
    stock, fast = _pair(kind)
    for connection in (stock, fast):
        connection.h2_connection.initiate_connection()
    frames = _frames_of(data)
    reads = [_PREAMBLE + frames.pop(0)]  # the client's SETTINGS
    carry = b""
    for count, cut in groups:
        chunk = carry + b"".join(frames[:count])
        del frames[:count]
        cut = min(cut, len(chunk) - 1) if cut % 3 == 0 else 0  # a third of reads end short
        carry = chunk[len(chunk) - cut :] if cut else b""
        reads.append(chunk[: len(chunk) - cut])
    reads.append(carry + b"".join(frames))
    for chunk in reads:
        if not chunk:
            continue
        assert _read(fast, chunk) == _read(stock, chunk)
        assert fast.h2_connection.data_to_send() == stock.h2_connection.data_to_send()


def _open_stream(
    connection: GRPCConnection, window: int = 65_535, headers: list[Any] = _HEADERS
) -> h2.connection.H2Connection:
    client = _client()
    client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
    client.send_headers(1, headers)
    connection.h2_connection.initiate_connection()
    connection.receive_data(client.data_to_send())
    return client


def _raw_data_frame(stream_id: int, payload: bytes, flags: int = 0) -> bytes:
    size = len(payload)
    return struct.pack(">HBBBI", size >> 8, size & 0xFF, 0, flags, stream_id) + payload


@pytest.mark.parametrize(
    ("frame", "case"),
    [
        (_raw_data_frame(1, b"x" * 70_000), "large-frames"),  # past both windows
        (_raw_data_frame(1, _message(b"x" * 20_000)), "small-frames"),  # past the frame size
        (_raw_data_frame(3, _message(b"hi")), ""),  # a stream never opened
        (_raw_data_frame(1 | 1 << 31, _message(b"hi")), ""),  # the reserved bit set
        (_raw_data_frame(1, _message(b"hi")), "reset"),  # a stream the server reset
        (_raw_data_frame(1, _message(b"hi")), "content-length"),  # longer than announced
    ],
    ids=[
        "past-window",
        "past-frame-size",
        "unknown-stream",
        "reserved-bit",
        "reset-stream",
        "content-length",
    ],
)
def test_frames_h2_refuses_get_h2s_answer(frame: bytes, case: str) -> None:
    config = GRPCConfiguration(client_side=False)
    stock, fast = GRPCConnection(config), FastConnection(config)
    headers = [*_HEADERS, ("content-length", "3")] if case == "content-length" else _HEADERS
    for connection in (stock, fast):
        _open_stream(connection, headers=headers)
        if case == "large-frames":
            connection.h2_connection.max_inbound_frame_size = 2**20
        if case == "small-frames":
            connection.h2_connection.max_inbound_frame_size = 16_384
        if case == "reset":
            connection.h2_connection.reset_stream(1)
        connection.h2_connection.data_to_send()
    assert _read(fast, frame) == _read(stock, frame)
    assert fast.h2_connection.data_to_send() == stock.h2_connection.data_to_send()


def test_the_usual_frame_takes_the_fast_path() -> None:
    """A frame of whole messages on an open stream never reaches h2 (so the test above
    compares the fast path, not h2 with itself)."""
    connection = FastConnection(GRPCConfiguration(client_side=False))
    client = _open_stream(connection)
    client.send_data(1, _message(b"a") + _message(b"bc"))
    frame = client.data_to_send()
    h2_connection = connection.h2_connection

    def refuse(data: bytes) -> list[Any]:
        raise AssertionError("h2 read the frame")

    h2_connection.receive_data = refuse
    events = connection.receive_data(frame)
    assert [(e.data, e.flow_controlled_length) for e in events] == [(b"a", 6), (b"bc", 7)]


def test_whole_messages_leaves_anything_else_to_purerpc() -> None:
    assert _frames.whole_messages(_message(b"ab") + _message(b""), 10) == [(b"ab", 7), (b"", 5)]
    assert _frames.whole_messages(_message(b"ab")[:-1], 10) is None  # cut short
    assert _frames.whole_messages(_message(b"ab") + b"\x00\x00", 10) is None  # a partial prefix
    assert _frames.whole_messages(_message(b"ab", compressed=True), 100) is None
    assert _frames.whole_messages(_message(b"x" * 11), 10) is None  # over the limit
    assert _frames.whole_messages(b"", 10) == []
