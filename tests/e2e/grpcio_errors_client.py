"""A stock grpcio client that provokes every refusal a client can meet, run by test_interop.

Only grpcio and stubs generated from proto/ (never mas). Each scenario records the gRPC
status code and details it got (``[code, details]``, ``["OK", ""]`` when accepted) under a
name; the test compares them with the table in docs/compatibility.md. Prints one JSON object.

usage: grpcio_errors_client.py SETUP_JSON
    SETUP_JSON: {"stubs": dir, "port": int, "ca": path, "certs": {name: [cert, key]}}
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
from typing import Any

import grpc

STEP_TIMEOUT = 10.0  # seconds any one answer may take


def main() -> None:
    with open(sys.argv[1]) as f:
        setup = json.load(f)
    sys.path.insert(0, setup["stubs"])
    import runtime_pb2 as pb
    import runtime_pb2_grpc as pb_grpc

    def read(path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    ca = read(setup["ca"])
    channels: list[grpc.Channel] = []

    def stub(name: str) -> Any:
        cert, key = setup["certs"][name]
        credentials = grpc.ssl_channel_credentials(ca, read(key), read(cert))
        channel = grpc.secure_channel(f"127.0.0.1:{setup['port']}", credentials)
        channels.append(channel)
        return pb_grpc.RuntimeServiceStub(channel)

    seen: dict[str, list[str]] = {}

    def outcome(name: str, call: Any) -> Any:
        try:
            result = call()
        except grpc.RpcError as exc:
            seen[name] = [exc.code().name, exc.details() or ""]
            return None
        seen[name] = ["OK", ""]
        return result

    class Session:
        """A Transport stream read by a thread into a queue (events, then the end status)."""

        def __init__(self, runtime: Any) -> None:
            self.outgoing: queue.Queue[Any] = queue.Queue()
            self.incoming: queue.Queue[Any] = queue.Queue()
            self.call = runtime.Transport(self._frames(), timeout=120)
            threading.Thread(target=self._read, daemon=True).start()

        def _frames(self) -> Any:
            while (frame := self.outgoing.get()) is not None:
                yield frame

        def _read(self) -> None:
            try:
                for event in self.call:
                    self.incoming.put(event)
                self.incoming.put(["OK", ""])
            except grpc.RpcError as exc:
                self.incoming.put([exc.code().name, exc.details() or ""])

        def send(self, **event: Any) -> None:
            self.outgoing.put(pb.ClientEvent(**event))

        def next(self) -> Any:
            return self.incoming.get(timeout=STEP_TIMEOUT)

        def end(self) -> list[str]:
            """The status the server ended the stream with (events before it are skipped)."""
            while not isinstance(event := self.next(), list):
                pass
            return list(event)

        def delivery(self) -> Any:
            event = self.next()
            assert not isinstance(event, list), event
            assert event.WhichOneof("event") == "delivery", event
            self.send(ack=pb.Ack(delivery_id=event.delivery.delivery_id))
            return event.delivery

    # -- identity: every RPC needs an acceptable, allowlisted, unrevoked certificate ------
    for name in (
        "missing_spiffe_san",
        "dns_only",
        "two_uris",
        "other_trust_domain",
        "ca_as_leaf",
        "stranger",
        "revoked",
    ):
        runtime = stub(name)
        outcome(f"identity.{name}", lambda r=runtime: r.GetState(pb.GetStateRequest(), timeout=10))

    # -- the session and the unary RPCs ---------------------------------------------------
    legacy = stub("legacy")
    session = Session(legacy)
    session.send(hello=pb.Hello(instance_id="legacy-1"))
    welcome = session.next().welcome
    seen["welcome"] = [welcome.agent_id, welcome.instance_id, str(welcome.stream_messages)]
    found = legacy.Discover(pb.DiscoverRequest(), timeout=10).agents
    seen["discovered"] = sorted([a.agent_id, a.status] for a in found)

    def send(name: str, runtime: Any = legacy, **fields: Any) -> Any:
        fields.setdefault("message_type", "note")
        fields.setdefault("data_json", "{}")
        request = pb.SendRequest(**fields)
        return outcome(name, lambda: runtime.Send(request, timeout=10))

    def ask(name: str, **fields: Any) -> Any:
        fields.setdefault("message_type", "ask")
        fields.setdefault("data_json", "{}")
        request = pb.RequestRequest(**fields)
        return outcome(name, lambda: legacy.Request(request, timeout=10))

    def reply(name: str, runtime: Any = legacy, **fields: Any) -> Any:
        fields.setdefault("message_type", "answer")
        fields.setdefault("data_json", "{}")
        request = pb.ReplyRequest(**fields)
        return outcome(name, lambda: runtime.Reply(request, timeout=10))

    ask("request.no_instance", target_id="legacy", timeout_ms=5000)
    send("send.unbound_instance", target_id="sink", instance_id="not-mine")
    send("send.empty_type", target_id="sink", message_type="")
    send("send.too_large", target_id="sink", data_json='{"s": "' + "x" * 5000 + '"}')
    send("send.not_an_object", target_id="sink", data_json="[1]")
    send("send.not_permitted", target_id="other")
    send("send.dlp", target_id="sink", data_json='{"password": "hunter2"}')
    ask("request.negative_timeout", target_id="legacy", timeout_ms=-1, instance_id="legacy-1")
    for n in range(3):
        send(f"send.offline_{n}", target_id="full", data_json=json.dumps({"n": n}))

    asked = ask("request.ok", target_id="legacy", timeout_ms=5000, instance_id="legacy-1")
    request = session.delivery()
    seen["request_delivered"] = [json.loads(request.envelope_json)["meta"]["correlation_id"]]
    cid = asked.correlation_id
    reply("reply.wrong_agent", stub("intruder"), correlation_id=cid)
    reply("reply.bad_error_reply", correlation_id=cid, message_type="mas.error", data_json="{}")
    reply("reply.ok", correlation_id=cid, instance_id="legacy-1")
    session.delivery()  # the reply, to the requesting instance
    reply("reply.second", correlation_id=cid, instance_id="legacy-1")
    reply("reply.made_up", correlation_id="no-such-request", instance_id="legacy-1")

    spammer = stub("spammer")  # rate_limit: 1 per minute
    send("send.rate_first", spammer, target_id="spammer")
    send("send.rate_second", spammer, target_id="spammer")

    tripped = Session(stub("tripped"))  # a target that fails everything it gets
    tripped.send(hello=pb.Hello(instance_id="tripped-1"))
    tripped.next()
    for _ in range(20):  # bounded: the breaker opens after the first failure
        if send("send.to_tripped", target_id="tripped") is None:
            break
        delivered = tripped.next().delivery
        tripped.send(nack=pb.Nack(delivery_id=delivered.delivery_id, retryable=False))
        time.sleep(0.05)

    # -- state ----------------------------------------------------------------------------
    seed_values = {"count": str(42), "flag": str(True), "nothing": str(None), "name": "bob"}
    outcome(
        "state.seed_values",
        lambda: legacy.UpdateState(pb.UpdateStateRequest(updates=seed_values), timeout=10),
    )
    seen["state"] = [json.dumps(dict(legacy.GetState(pb.GetStateRequest(), timeout=10).state))]
    for name, request in (
        ("state.empty_key", pb.UpdateStateRequest(updates={"": "1"})),
        ("state.not_json", pb.UpdateStateRequest(updates={"k": "not json"}, json_values=True)),
        ("state.too_large", pb.UpdateStateRequest(updates={"k": "x" * 2000})),
        ("state.stale", pb.UpdateStateRequest(updates={"k": "1"}, expected_version=999)),
    ):
        outcome(name, lambda request=request: legacy.UpdateState(request, timeout=10))

    # -- Transport refusals -----------------------------------------------------------------
    no_hello = Session(legacy)
    no_hello.send(ack=pb.Ack(delivery_id="x"))
    seen["transport.no_hello"] = no_hello.end()
    bad_instance = Session(legacy)
    bad_instance.send(hello=pb.Hello(instance_id="not a valid id!"))
    seen["transport.bad_instance"] = bad_instance.end()
    second = Session(legacy)  # max_sessions_per_agent: 1
    second.send(hello=pb.Hello(instance_id="legacy-2"))
    seen["transport.too_many"] = second.end()

    first_twin = Session(stub("twin"))
    first_twin.send(hello=pb.Hello(instance_id="twin-1"))
    first_twin.next()
    second_twin = Session(stub("twin"))  # the same instance, on another connection
    second_twin.send(hello=pb.Hello(instance_id="twin-1"))
    second_twin.next()
    seen["transport.replaced"] = first_twin.end()
    second_twin.send(hello=pb.Hello(instance_id="twin-1"))
    seen["transport.second_hello"] = second_twin.end()
    silent = Session(stub("twin"))  # says nothing: hello_timeout is 1 s
    seen["transport.silent"] = silent.end()

    unknown = unknown_method_call(channels[-1])
    outcome("rpc.unknown_method", unknown)

    # -- a reply after its request's deadline (last: its failure may open legacy's breaker)
    late = ask("request.short", target_id="legacy", timeout_ms=300, instance_id="legacy-1")
    session.delivery()
    time.sleep(0.8)  # past the request's 300 ms deadline
    reply("reply.late", correlation_id=late.correlation_id, instance_id="legacy-1")

    for s in (session, tripped, second_twin):
        s.outgoing.put(None)
    for channel in channels:
        channel.close()
    print(json.dumps(seen))


def unknown_method_call(channel: grpc.Channel) -> Any:
    """A call of a method the service does not have, as raw bytes."""
    method = channel.unary_unary(
        "/mas.runtime.v1.RuntimeService/NoSuchMethod",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    return lambda: method(b"", timeout=10)


if __name__ == "__main__":
    main()
