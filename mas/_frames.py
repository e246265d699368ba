"""HTTP/2 DATA frames on open streams, written and read without h2's per-frame bookkeeping.

h2 handles every frame through a frame object, two state machines, its flow-control
managers and log calls; purerpc then copies a DATA frame's payload through a byte deque
to cut it into gRPC messages. For a DATA frame of an open stream (no END_STREAM, no
padding) that changes nothing but the two flow-control windows and the stream's byte
count, and its messages are usually whole. Measured in process (``python -m
benchmarks.frames_micro``: purerpc's connection over h2 3.2, a 300-byte message, the
frame read and its bytes given back to the window): 25-35 µs through h2 and purerpc,
6-9 µs here.

``send_data`` frames an outgoing DATA frame; ``receive_frames`` reads the leading run of
such frames of a read and leaves anything else (headers, settings, a partial frame, a
frame past a window: whatever h2 must check or refuse) to h2, in order; and
``whole_messages`` cuts a payload into its gRPC messages when it holds whole,
uncompressed ones (``whole_messages_of``: a frame's, as purerpc's events). Each falls
back to h2 or purerpc for anything else, so their errors stay theirs. They rely on the
internals of h2 3.2 (pinned through purerpc 0.8).
"""

from __future__ import annotations

import struct
from typing import Any, Final

import h2.connection
import h2.events
import h2.stream
from purerpc.grpclib.connection import GRPCConnection
from purerpc.grpclib.events import MessageReceived

# HTTP/2 frame header: 24-bit length (as 16 + 8), type, flags, stream id.
_HEADER: Final = struct.Struct(">HBBBI")
_HEADER_SIZE: Final = 9
_PREFIX: Final = struct.Struct(">?I")  # gRPC message prefix: compressed flag, length
_PREFIX_SIZE: Final = 5
_DATA: Final = 0  # frame type

# Where a DATA frame (without END_STREAM) changes no state of h2's connection or stream.
_OPEN_CONNECTION: Final = frozenset(
    {h2.connection.ConnectionState.SERVER_OPEN, h2.connection.ConnectionState.CLIENT_OPEN}
)
_SENDING_STREAM: Final = frozenset(
    {h2.stream.StreamState.OPEN, h2.stream.StreamState.HALF_CLOSED_REMOTE}
)
_RECEIVING_STREAM: Final = frozenset(
    {h2.stream.StreamState.OPEN, h2.stream.StreamState.HALF_CLOSED_LOCAL}
)


def send_data(connection: GRPCConnection, stream_id: int, data: bytes) -> None:
    """Queue ``data`` as one DATA frame of ``stream_id`` (no END_STREAM), as h2 would.

    On an open stream whose windows and frame size admit it, the frame is written to h2's
    output buffer directly and the two flow-control windows are charged, which is all
    h2's ``send_data`` does for such a frame; anything else goes through h2 (its checks
    and its errors).
    """
    h2_connection = connection.h2_connection
    stream = h2_connection.streams.get(stream_id)
    size = len(data)
    if (
        stream is None
        or stream.state_machine.state not in _SENDING_STREAM
        or h2_connection.state_machine.state not in _OPEN_CONNECTION
        or size > h2_connection.outbound_flow_control_window
        or size > stream.outbound_flow_control_window
        or size > h2_connection.max_outbound_frame_size
    ):
        connection.send_data(stream_id, data)
        return
    output = h2_connection._data_to_send
    output += _HEADER.pack(size >> 8, size & 0xFF, _DATA, 0, stream_id)
    output += data
    h2_connection.outbound_flow_control_window -= size
    stream.outbound_flow_control_window -= size


def receive_frames(h2_connection: Any, data: bytes) -> list[Any]:
    """h2's events for ``data`` received, as ``h2_connection.receive_data(data)`` returns them.

    The leading DATA frames that h2 would accept without changing any state (complete,
    no flags, on a stream open for receiving, within both windows and the frame size, on
    a stream without a content-length to check) become ``DataReceived`` events here,
    charging the same windows and byte count h2 charges; the first frame that is anything
    else, and everything after it, goes to h2, which also raises its own errors for them.
    Only when h2 holds nothing of an earlier read (no partial frame, no unfinished
    header block, its preamble read), so the frames' order is kept.
    """
    buffer = h2_connection.incoming_buffer
    if (
        buffer.data
        or buffer._preamble_len
        or buffer._headers_buffer
        or h2_connection.state_machine.state not in _OPEN_CONNECTION
    ):
        return list(h2_connection.receive_data(data))
    streams = h2_connection.streams
    window = h2_connection._inbound_flow_control_window_manager
    max_size = h2_connection.max_inbound_frame_size
    events: list[Any] = []
    offset = 0
    end = len(data)
    while end - offset >= _HEADER_SIZE:
        high, low, kind, flags, stream_id = _HEADER.unpack_from(data, offset)
        size = high << 8 | low
        start = offset + _HEADER_SIZE
        if kind != _DATA or flags or size > max_size or start + size > end:
            break
        stream = streams.get(stream_id)  # (a set reserved bit makes an id no stream has)
        if (
            stream is None
            or stream.state_machine.state not in _RECEIVING_STREAM
            or stream._expected_content_length is not None
        ):
            break
        stream_window = stream._inbound_window_manager
        if size > window.current_window_size or size > stream_window.current_window_size:
            break
        window.current_window_size -= size
        stream_window.current_window_size -= size
        stream._actual_content_length += size
        offset = start + size
        event = h2.events.DataReceived()
        event.stream_id = stream_id
        event.data = data[start:offset]
        event.flow_controlled_length = size
        events.append(event)
    if offset < end:
        events.extend(h2_connection.receive_data(data[offset:] if offset else data))
    return events


def whole_messages(payload: bytes, max_length: int) -> list[tuple[bytes, int]] | None:
    """``payload``'s gRPC messages and the bytes each took, when it is only whole ones.

    None when any message is compressed, longer than ``max_length``, or not all in
    ``payload`` (purerpc's buffer then takes it, with its checks and errors). Each
    message took its 5-byte prefix and its length, as purerpc counts them: for a frame
    without padding only (purerpc charges a frame's padding to its messages).
    """
    messages = []
    offset = 0
    end = len(payload)
    while offset < end:
        if end - offset < _PREFIX_SIZE:
            return None
        compressed, length = _PREFIX.unpack_from(payload, offset)
        start = offset + _PREFIX_SIZE
        if compressed or length > max_length or start + length > end:
            return None
        offset = start + length
        messages.append((payload[start:offset], _PREFIX_SIZE + length))
    return messages


def whole_messages_of(event: Any, buffer: Any) -> list[MessageReceived] | None:
    """purerpc's events for a ``DataReceived`` of whole, uncompressed messages, cut here.

    None (the caller then feeds purerpc's ``MessageReadBuffer``, with its checks and
    errors) when ``buffer`` holds part of a message already, when the frame was padded,
    or when ``whole_messages`` does not take its payload.
    """
    if event.flow_controlled_length != len(event.data):
        return None
    if buffer._buffer or buffer._message_length is not None or buffer._messages:
        return None
    messages = whole_messages(event.data, buffer._max_message_length)
    if messages is None:
        return None
    stream_id = event.stream_id
    return [MessageReceived(stream_id, data, size) for data, size in messages]
