"""A stock grpcio client with gzip compression on, run as a subprocess by test_compression.

usage: grpcio_gzip_client.py STUB_DIR PORT CA CERT KEY BOMB_BYTES

It prints one JSON object: for each call, "ok" or the status code and details.
"""

from __future__ import annotations

import json
import sys

import grpc


def main() -> None:
    stub_dir, port, ca, cert, key, bomb = sys.argv[1:7]
    sys.path.insert(0, stub_dir)
    import runtime_pb2 as pb
    import runtime_pb2_grpc as pb_grpc

    def read(path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    credentials = grpc.ssl_channel_credentials(read(ca), read(key), read(cert))
    seen: dict[str, object] = {}

    def call(name: str, method: object, request: object) -> object:
        try:
            response = method(request, timeout=20, compression=grpc.Compression.Gzip)  # type: ignore[operator]
        except grpc.RpcError as exc:
            seen[name] = [exc.code().name, exc.details()]
            return None
        seen[name] = "ok"
        return response

    with grpc.secure_channel(
        f"127.0.0.1:{port}", credentials, compression=grpc.Compression.Gzip
    ) as channel:
        stub = pb_grpc.RuntimeServiceStub(channel)
        call("update", stub.UpdateState, pb.UpdateStateRequest(updates={"k": '"small value"'}))
        state = call("get", stub.GetState, pb.GetStateRequest())
        seen["state"] = dict(state.state) if state is not None else None  # type: ignore[attr-defined]
        huge = '"' + " " * int(bomb) + '"'
        call("bomb", stub.UpdateState, pb.UpdateStateRequest(updates={"k": huge}))
        call("after_bomb", stub.GetState, pb.GetStateRequest())
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
