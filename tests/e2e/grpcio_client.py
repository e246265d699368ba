"""A stock grpcio client of the mas protocol, run as a subprocess by test_interop.

It uses only grpcio and stubs generated from proto/ (never mas), speaking the
protocol as mas-framework 0.4 clients do: Transport for deliveries and acks,
the unary RPCs for everything else. It prints one JSON object of observations.

usage: grpcio_client.py STUB_DIR PORT CA CERT KEY
"""

from __future__ import annotations

import json
import queue
import sys

import grpc


def main() -> None:
    stub_dir, port, ca, cert, key = sys.argv[1:6]
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
        outgoing: queue.Queue[object] = queue.Queue()

        def frames():  # type: ignore[no-untyped-def]
            while (frame := outgoing.get()) is not None:
                yield frame

        events = stub.Transport(frames(), timeout=30)
        outgoing.put(pb.ClientEvent(hello=pb.Hello(instance_id="legacy-1")))
        welcome = next(events)
        seen["welcome"] = [welcome.welcome.agent_id, welcome.welcome.instance_id]
        seen["reply_acks"] = welcome.welcome.reply_acks  # never asked for: base acks
        seen["late_results"] = welcome.welcome.late_results  # nor this: Results at once

        sent = stub.Send(
            pb.SendRequest(
                target_id="legacy",
                message_type="note",
                data_json='{"n": 1}',
                instance_id="legacy-1",
            ),
            timeout=10,
        )
        seen["send_message_id"] = bool(sent.message_id)
        delivery = next(events)
        assert delivery.WhichOneof("event") == "delivery", delivery
        envelope = json.loads(delivery.delivery.envelope_json)
        seen["delivered"] = [envelope["message_type"], envelope["data"], envelope["sender_id"]]
        outgoing.put(pb.ClientEvent(ack=pb.Ack(delivery_id=delivery.delivery.delivery_id)))

        requested = stub.Request(
            pb.RequestRequest(
                target_id="legacy",
                message_type="ask",
                data_json="{}",
                timeout_ms=5000,
                instance_id="legacy-1",
            ),
            timeout=10,
        )
        request = next(events)
        request_envelope = json.loads(request.delivery.envelope_json)
        seen["request_correlation_matches"] = (
            request_envelope["meta"]["correlation_id"] == requested.correlation_id
        )
        outgoing.put(pb.ClientEvent(ack=pb.Ack(delivery_id=request.delivery.delivery_id)))
        stub.Reply(
            pb.ReplyRequest(
                correlation_id=requested.correlation_id,
                message_type="answer",
                data_json='{"ok": true}',
                instance_id="legacy-1",
            ),
            timeout=10,
        )
        reply = next(events)
        reply_envelope = json.loads(reply.delivery.envelope_json)
        seen["reply"] = [
            reply_envelope["message_type"],
            reply_envelope["data"],
            reply_envelope["meta"]["is_reply"],
        ]
        outgoing.put(pb.ClientEvent(ack=pb.Ack(delivery_id=reply.delivery.delivery_id)))

        stub.UpdateState(pb.UpdateStateRequest(updates={"k": "[1, null, true]"}), timeout=10)
        seen["state"] = dict(stub.GetState(pb.GetStateRequest(), timeout=10).state)
        stub.ResetState(pb.ResetStateRequest(), timeout=10)
        seen["state_after_reset"] = dict(stub.GetState(pb.GetStateRequest(), timeout=10).state)
        agents = stub.Discover(pb.DiscoverRequest(capabilities=["legacy"]), timeout=10).agents
        seen["discovered"] = [[a.agent_id, a.status] for a in agents]
        try:
            stub.Send(
                pb.SendRequest(
                    target_id="other", message_type="x", data_json="{}", instance_id="legacy-1"
                ),
                timeout=10,
            )
        except grpc.RpcError as exc:
            seen["denied"] = [exc.code().name, exc.details()]
        outgoing.put(None)
        events.cancel()
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
