"""Reading one DATA frame, in process: ``python -m benchmarks.frames_micro [--frames N]``.

A client connection (purerpc over h2) writes one-message DATA frames on an open stream;
a server connection reads each and gives its bytes back to the flow-control window, as
the server and the SDK do for every frame they read. Printed per frame, median of
``--runs``: through purerpc's and h2's own path (``stock``), through ``mas._frames``
(``FastConnection``, the SDK's), and through the server's ``_LimitedConnection``.
"""

from __future__ import annotations

import argparse
import statistics
import struct
import time

from purerpc.grpclib.config import GRPCConfiguration
from purerpc.grpclib.connection import GRPCConnection

from mas._purerpc import FastConnection
from mas.server.transport import _LimitedConnection

KINDS = ("stock", "fast", "server")


def _connected(kind: str) -> tuple[GRPCConnection, GRPCConnection, int]:
    config = GRPCConfiguration(client_side=False)
    if kind == "stock":
        server = GRPCConnection(config)
    elif kind == "fast":
        server = FastConnection(config)
    else:
        server = _LimitedConnection(config, 100)
    client = GRPCConnection(GRPCConfiguration(client_side=True))
    server.initiate_connection()
    client.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    stream_id = client.h2_connection.get_next_available_stream_id()
    client.start_request(stream_id, "https", "s", "m", authority="x", content_type_suffix="proto")
    server.receive_data(client.data_to_send())
    return server, client, stream_id


def per_frame(kind: str, frames: int, payload: int) -> float:
    """Microseconds of one frame's read and acknowledgement."""
    server, client, stream_id = _connected(kind)
    message = struct.pack(">?I", False, payload) + b"x" * payload
    written = []
    for i in range(frames):
        client.send_data(stream_id, message)
        written.append(client.data_to_send())
        if i % 500 == 0:
            client.receive_data(server.data_to_send())  # the window updates so far
    started = time.perf_counter()
    for data in written:
        for event in server.receive_data(data):
            server.acknowledge_received_data(stream_id, event.flow_controlled_length)
    return (time.perf_counter() - started) / frames * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", type=int, default=5000)
    parser.add_argument("--payload", type=int, default=300, help="message bytes")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    runs: dict[str, list[float]] = {kind: [] for kind in KINDS}
    for _ in range(args.runs):  # interleaved, so a noisy moment touches every kind
        for kind in KINDS:
            runs[kind].append(per_frame(kind, args.frames, args.payload))
    for kind in KINDS:
        print(f"{kind:7} {statistics.median(runs[kind]):6.1f} us per frame read and acked")


if __name__ == "__main__":
    main()
