"""The adapter's own DATA frames are h2's, byte for byte, and charge the same windows."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.errors
import h2.exceptions
import h2.settings
import pytest
from purerpc.grpclib.config import GRPCConfiguration
from purerpc.grpclib.connection import GRPCConnection

from mas._frames import send_data


def _server_with_open_stream(window: int = 2**31 - 1) -> GRPCConnection:
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
    client.send_headers(
        1,
        [
            (":method", "POST"),
            (":scheme", "https"),
            (":path", "/s/m"),
            (":authority", "x"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ],
    )
    if window > 65_535:
        client.increment_flow_control_window(window - 65_535)
    server = GRPCConnection(GRPCConfiguration(client_side=False))
    server.h2_connection.initiate_connection()
    server.receive_data(client.data_to_send())
    server.h2_connection.send_headers(1, [(":status", "200")])
    server.h2_connection.data_to_send()
    return server


def _windows(server: GRPCConnection) -> tuple[int, int]:
    h2_connection = server.h2_connection
    return h2_connection.outbound_flow_control_window, h2_connection.streams[
        1
    ].outbound_flow_control_window


@pytest.mark.parametrize("size", [0, 1, 200, 16_384])
def test_frame_and_windows_are_those_h2_would_produce(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    by_h2, ours = _server_with_open_stream(), _server_with_open_stream()
    by_h2.send_data(1, payload)
    send_data(ours, 1, payload)
    assert by_h2.h2_connection.data_to_send() == ours.h2_connection.data_to_send()
    assert _windows(by_h2) == _windows(ours)


def test_a_frame_past_the_window_gets_h2s_error() -> None:
    server = _server_with_open_stream(window=100)
    with pytest.raises(h2.exceptions.FlowControlError):
        send_data(server, 1, b"x" * 101)


def test_a_closed_stream_gets_h2s_error() -> None:
    server = _server_with_open_stream()
    server.h2_connection.reset_stream(1, h2.errors.ErrorCodes.CANCEL)
    with pytest.raises(h2.exceptions.StreamClosedError):
        send_data(server, 1, b"x")
