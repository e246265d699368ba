"""A stock grpcio client's state calls, run as a subprocess by test_state_interop.

Only grpcio and stubs generated from proto/ (never mas). ``write`` stores values as the
seed system's SDK sends them (``str(value)``), reads them back, and tries a stale
conditional update and an empty key; ``read`` only reads. Prints one JSON object.

usage: grpcio_state_client.py STUB_DIR PORT CA CERT KEY write|read
"""

from __future__ import annotations

import json
import sys

import grpc

SEED_VALUES = {  # str(value) of what a seed-system agent would have stored
    "name": "bob",
    "flag": str(True),
    "nothing": str(None),
    "count": str(42),
    "ratio": str(1.5),
    "mapping": str({"a": 1, "b": [None, True]}),
    "quoted": '"already quoted"',
    "json_like": '{"k": [1, 2]}',
    "empty": "",
    "unicode": "é ✓ \u0000 end",
}


def main() -> None:
    stub_dir, port, ca, cert, key, mode = sys.argv[1:7]
    sys.path.insert(0, stub_dir)
    import runtime_pb2 as pb
    import runtime_pb2_grpc as pb_grpc

    def read(path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    credentials = grpc.ssl_channel_credentials(read(ca), read(key), read(cert))
    seen: dict[str, object] = {}
    with grpc.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
        stub = pb_grpc.RuntimeServiceStub(channel)
        if mode == "write":
            stub.UpdateState(pb.UpdateStateRequest(updates=SEED_VALUES), timeout=10)
            got = stub.GetState(pb.GetStateRequest(), timeout=10)
            seen["state"] = dict(got.state)
            seen["version"] = got.version
            try:
                stub.UpdateState(
                    pb.UpdateStateRequest(updates={"name": "eve"}, expected_version=0),
                    timeout=10,
                )
            except grpc.RpcError as exc:
                seen["stale"] = [exc.code().name, exc.details()]
            done = stub.UpdateState(
                pb.UpdateStateRequest(updates={"name": "alice"}, expected_version=got.version),
                timeout=10,
            )
            seen["conditional_version"] = done.version
            try:
                stub.UpdateState(pb.UpdateStateRequest(updates={"": "x"}), timeout=10)
            except grpc.RpcError as exc:
                seen["empty_key"] = [exc.code().name, exc.details()]
        got = stub.GetState(pb.GetStateRequest(), timeout=10)
        seen["final"] = dict(got.state)
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
