"""A stock grpcio client with keepalive on, run as a subprocess by test_keepalive.

usage: grpcio_keepalive_client.py STUB_DIR PORT CA CERT KEY SECONDS

Keepalive PINGs every second, with and without calls in flight
(``keepalive_permit_without_calls``, no cap on PINGs without data), BDP probing on
(grpcio's default, which PINGs and sends SETTINGS as data flows), while an open
Transport session idles and unary calls carry large messages. It prints one JSON
object: the calls that succeeded, the errors seen, and whether the session stayed open.
"""

from __future__ import annotations

import json
import queue
import sys
import time

import grpc

_OPTIONS = [
    ("grpc.keepalive_time_ms", 1_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.http2.min_time_between_pings_ms", 1_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 1_000),
    ("grpc.http2.bdp_probe", 1),
]


def main() -> None:
    stub_dir, port, ca, cert, key, seconds = sys.argv[1:7]
    sys.path.insert(0, stub_dir)
    import runtime_pb2 as pb
    import runtime_pb2_grpc as pb_grpc

    def read(path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    credentials = grpc.ssl_channel_credentials(read(ca), read(key), read(cert))
    seen: dict[str, object] = {"ok": 0, "errors": []}
    errors: list[str] = seen["errors"]  # type: ignore[assignment]
    with grpc.secure_channel(f"127.0.0.1:{port}", credentials, options=_OPTIONS) as channel:
        stub = pb_grpc.RuntimeServiceStub(channel)
        outgoing: queue.Queue[object] = queue.Queue()

        def frames():  # type: ignore[no-untyped-def]
            while (frame := outgoing.get()) is not None:
                yield frame

        events = stub.Transport(frames(), timeout=float(seconds) + 30)
        outgoing.put(pb.ClientEvent(hello=pb.Hello(instance_id="keepalive-1")))
        try:
            seen["welcome"] = next(events).WhichOneof("event")
        except grpc.RpcError as exc:
            errors.append(f"transport {exc.code().name} {exc.details()}")
        big = '"' + "x" * 200_000 + '"'
        deadline = time.monotonic() + float(seconds)
        n = 0
        while time.monotonic() < deadline:
            try:
                if n % 2:
                    stub.UpdateState(pb.UpdateStateRequest(updates={"k": big}), timeout=10)
                else:
                    stub.GetState(pb.GetStateRequest(), timeout=10)
                seen["ok"] += 1  # type: ignore[operator]
            except grpc.RpcError as exc:
                errors.append(f"{exc.code().name} {exc.details()}")
            n += 1
            # Idle stretches between bursts: keepalive PINGs without data.
            time.sleep(1.5 if n % 10 == 0 else 0.02)
        outgoing.put(pb.ClientEvent(heartbeat=pb.Heartbeat()))
        outgoing.put(None)
        try:
            for _ in events:
                pass
            seen["session"] = "closed by us"
        except grpc.RpcError as exc:
            seen["session"] = f"{exc.code().name} {exc.details()}"
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
