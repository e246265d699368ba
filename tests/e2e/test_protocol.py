"""The server against a bare protocol client over real loopback mTLS.

These tests misbehave on purpose (spoofed instances, replayed correlation ids,
oversize and malformed frames) and check that each gets a clear status and that
the server keeps serving.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
import trio.testing
from rawclient import (
    CallFailed,
    RawClient,
    RawSession,
    raw_client,
    refused_client,
    sessions,
    wait_until_closed,
)

from mas._proto import runtime_pb2 as pb
from mas.testing import TestPKI, make_config, open_test_server

PAIR = [{"type": "allow_bidirectional", "agents": ["a", "b"]}]


async def _request_to_b(a: RawSession, b: RawSession) -> dict[str, object]:
    result = await a.call("request", target_id="b", message_type="ping", data_json='{"n": 1}')
    assert not result.HasField("error"), result
    delivery = await b.next_delivery()
    await b.send(ack=pb.Ack(delivery_id=delivery.delivery_id))
    envelope: dict[str, object] = json.loads(delivery.envelope_json)
    return envelope


async def test_request_reply_round_trip_sets_identity_fields(pki: TestPKI) -> None:
    with trio.fail_after(10):
        async with open_test_server(make_config(["a", "b"], PAIR), pki) as server:
            async with sessions(server, pki, "a", "b") as (a, b):
                envelope = await _request_to_b(a, b)
                assert envelope["sender_id"] == "a"
                meta = envelope["meta"]
                assert isinstance(meta, dict)
                assert meta["sender_instance_id"] == "a1"
                assert meta["expects_reply"] is True
                result = await b.call(
                    "reply",
                    correlation_id=meta["correlation_id"],
                    message_type="pong",
                    data_json="{}",
                )
                assert not result.HasField("error")
                reply = json.loads((await a.next_delivery()).envelope_json)
                assert reply["sender_id"] == "b"
                assert reply["meta"]["is_reply"] is True
                assert reply["meta"]["reply_to_instance_id"] == "a1"


async def test_replayed_correlation_id_is_refused(pki: TestPKI) -> None:
    with trio.fail_after(10):
        async with open_test_server(make_config(["a", "b"], PAIR), pki) as server:
            async with sessions(server, pki, "a", "b") as (a, b):
                envelope = await _request_to_b(a, b)
                correlation_id = envelope["meta"]["correlation_id"]  # type: ignore[index]
                first = await b.call(
                    "reply", correlation_id=correlation_id, message_type="r", data_json="{}"
                )
                assert not first.HasField("error")
                again = await b.call(
                    "reply", correlation_id=correlation_id, message_type="r", data_json="{}"
                )
                assert (again.error.code, again.error.message) == (
                    "INVALID_ARGUMENT",
                    "unknown_correlation_id",
                )


async def test_reply_from_third_agent_is_refused_and_target_can_still_reply(pki: TestPKI) -> None:
    perms = [*PAIR, {"type": "allow_wildcard", "agent_id": "c"}]
    with trio.fail_after(10):
        async with open_test_server(make_config(["a", "b", "c"], perms), pki) as server:
            port = server.address.port
            async with (
                raw_client(port, pki.client_ssl_context("a")) as ca,
                raw_client(port, pki.client_ssl_context("b")) as cb,
                raw_client(port, pki.client_ssl_context("c")) as cc,
            ):
                a, b, c = await ca.transport(), await cb.transport(), await cc.transport()
                await a.hello("a1")
                await b.hello("b1")
                await c.hello("c1")
                envelope = await _request_to_b(a, b)
                correlation_id = envelope["meta"]["correlation_id"]  # type: ignore[index]
                stolen = await c.call(
                    "reply", correlation_id=correlation_id, message_type="r", data_json="{}"
                )
                assert (stolen.error.code, stolen.error.message) == (
                    "PERMISSION_DENIED",
                    "not_authorized",
                )
                rightful = await b.call(
                    "reply", correlation_id=correlation_id, message_type="r", data_json="{}"
                )
                assert not rightful.HasField("error")


async def test_unary_call_cannot_claim_another_connections_instance(pki: TestPKI) -> None:
    with trio.fail_after(10):
        async with open_test_server(make_config(["a", "b"], PAIR), pki) as server:
            port = server.address.port
            async with (
                raw_client(port, pki.client_ssl_context("a")) as ca,
                raw_client(port, pki.client_ssl_context("a")) as other,
            ):
                a = await ca.transport()
                await a.hello("a1")
                spoof = pb.SendRequest(
                    target_id="b", message_type="t", data_json="{}", instance_id="a1"
                )
                with pytest.raises(CallFailed) as failed:
                    await other.unary("Send", spoof, pb.SendResponse)
                assert (failed.value.code, failed.value.reason) == (
                    "FAILED_PRECONDITION",
                    "instance_not_bound",
                )
                # On its own connection the same call is accepted.
                response = await ca.unary("Send", spoof, pb.SendResponse)
                assert response.message_id


async def _refused_then_closed(client: RawClient, method: str, request: Any, response: Any) -> str:
    """The refusal's reason; the connection must be closed right after it."""
    with pytest.raises(CallFailed) as failed:
        await client.unary(method, request, response)
    assert failed.value.code == "UNAUTHENTICATED"
    # Refused at the door: the server closes the connection after answering once.
    await wait_until_closed(client, 2.0)
    return failed.value.reason


async def test_non_allowlisted_identity_is_refused_at_the_door(pki: TestPKI) -> None:
    with trio.fail_after(10):
        async with open_test_server(make_config(["a", "b"], PAIR), pki) as server:
            calls = (
                ("Send", pb.SendRequest(target_id="a", message_type="t"), pb.SendResponse),
                ("GetState", pb.GetStateRequest(), pb.GetStateResponse),
                ("Discover", pb.DiscoverRequest(), pb.DiscoverResponse),
                ("Transport", pb.ClientEvent(hello=pb.Hello(instance_id="m1")), pb.ServerEvent),
            )
            for method, request, response in calls:
                async with raw_client(server.address.port, pki.client_ssl_context("mallory")) as cm:
                    reason = await _refused_then_closed(cm, method, request, response)
                    assert reason == "not_allowlisted"
            assert server.statistics()["sessions"] == 0
            await server.audit.flush()
            # One audit record per refused connection, not per RPC.
            assert server.audit.statistics()["decisions"]["AUTHN_DENIED"] == len(calls)


@pytest.mark.parametrize(
    ("leaf", "reason"),
    [
        ({"common_name": "no-san"}, "missing_spiffe_san"),
        ({"common_name": "dns", "dns": ["a.example"]}, "invalid_spiffe_san"),
        (
            {"common_name": "two", "uris": ["spiffe://mas/agent/a", "spiffe://mas/agent/b"]},
            "invalid_spiffe_san",
        ),
        ({"common_name": "td", "uris": ["spiffe://other/agent/a"]}, "invalid_spiffe_format"),
        ({"common_name": "ca", "uris": ["spiffe://mas/agent/a"], "is_ca": True}, "ca_certificate"),
    ],
)
async def test_bad_identity_certificate_is_refused_with_reason(
    pki: TestPKI, leaf: dict[str, object], reason: str
) -> None:
    with trio.fail_after(10):
        async with open_test_server(make_config(["a", "b"], PAIR), pki) as server:
            context = pki.client_ssl_context(key_pair=pki.leaf(**leaf))
            async with refused_client(server.address.port, context) as client:
                got = await _refused_then_closed(
                    client, "GetState", pb.GetStateRequest(), pb.GetStateResponse
                )
                assert got == reason


async def test_client_without_certificate_fails_handshake_and_server_keeps_serving(
    pki: TestPKI,
) -> None:
    with trio.fail_after(10):
        async with open_test_server(make_config(["a", "b"], PAIR), pki) as server:
            port = server.address.port
            with pytest.raises(BaseException):  # noqa: B017 - TLS alert or reset, either is a refusal
                async with raw_client(port, pki.client_ssl_context()) as anonymous:
                    await anonymous.unary("GetState", pb.GetStateRequest(), pb.GetStateResponse)
            async with raw_client(port, pki.client_ssl_context("a")) as ca:
                await ca.unary("GetState", pb.GetStateRequest(), pb.GetStateResponse)
            assert server.statistics()["refused_handshakes"] >= 1


async def test_deny_by_default_refuses_unlisted_pair(pki: TestPKI) -> None:
    with trio.fail_after(10):
        async with open_test_server(make_config(["a", "b"]), pki) as server:
            async with raw_client(server.address.port, pki.client_ssl_context("a")) as ca:
                a = await ca.transport()
                await a.hello("a1")
                result = await a.call("send", target_id="b", message_type="t", data_json="{}")
                assert (result.error.code, result.error.message) == (
                    "PERMISSION_DENIED",
                    "not_authorized",
                )


async def test_bad_payloads_get_reasons_and_the_session_survives(pki: TestPKI) -> None:
    config = make_config(["a", "b"], PAIR, limits={"max_message_bytes": 1000})
    with trio.fail_after(10):
        async with open_test_server(config, pki) as server:
            async with raw_client(server.address.port, pki.client_ssl_context("a")) as ca:
                a = await ca.transport()
                await a.hello("a1")
                cases = [
                    ({"data_json": "[1, 2]"}, ("INVALID_ARGUMENT", "invalid_payload")),
                    ({"data_json": "{not json"}, ("INVALID_ARGUMENT", "invalid_payload")),
                    (
                        {"data_json": json.dumps({"x": "y" * 1200})},
                        ("RESOURCE_EXHAUSTED", "message_too_large"),
                    ),
                    (
                        {"data_json": "{}", "message_type": ""},
                        ("INVALID_ARGUMENT", "invalid_message_type"),
                    ),
                ]
                for fields, expected in cases:
                    call = {"target_id": "b", "message_type": "t", **fields}
                    result = await a.call("send", **call)
                    assert (result.error.code, result.error.message) == expected
                ok = await a.call("send", target_id="b", message_type="t", data_json="{}")
                assert not ok.HasField("error")


async def test_frame_far_over_the_limit_ends_only_its_stream(pki: TestPKI) -> None:
    config = make_config(["a", "b"], PAIR, limits={"max_message_bytes": 1000})
    with trio.fail_after(10):
        async with open_test_server(config, pki) as server:
            async with raw_client(server.address.port, pki.client_ssl_context("a")) as ca:
                a = await ca.transport()
                await a.hello("a1")
                with pytest.raises(CallFailed) as failed:
                    await a.call(
                        "send",
                        target_id="b",
                        message_type="t",
                        data_json='{"x":"' + "y" * 200_000 + '"}',
                    )
                assert (failed.value.code, failed.value.reason) == (
                    "RESOURCE_EXHAUSTED",
                    "message_too_large",
                )
                # The connection still serves other RPCs.
                await ca.unary("GetState", pb.GetStateRequest(), pb.GetStateResponse)


async def test_transport_without_hello_times_out(
    pki: TestPKI, autojump_clock: trio.testing.MockClock
) -> None:
    config = make_config(["a"], limits={"hello_timeout": 5.0})
    async with open_test_server(config, pki) as server:
        async with raw_client(server.address.port, pki.client_ssl_context("a")) as ca:
            session = await ca.transport()
            await session.send(heartbeat=pb.Heartbeat())
            with pytest.raises(CallFailed) as failed:
                await session.receive()
            assert (failed.value.code, failed.value.reason) == (
                "INVALID_ARGUMENT",
                "hello_required",
            )
            silent = await ca.transport()
            with pytest.raises(CallFailed) as failed:
                await silent.receive()
            assert (failed.value.code, failed.value.reason) == (
                "DEADLINE_EXCEEDED",
                "hello_timeout",
            )


async def test_unacked_deliveries_return_to_the_queue_when_session_ends(pki: TestPKI) -> None:
    with trio.fail_after(10):
        async with open_test_server(make_config(["a", "b"], PAIR), pki) as server:
            port = server.address.port
            async with raw_client(port, pki.client_ssl_context("a")) as ca:
                a = await ca.transport()
                await a.hello("a1")
                for n in range(3):
                    await a.call(
                        "send", target_id="b", message_type="t", data_json=json.dumps({"n": n})
                    )
            async with raw_client(port, pki.client_ssl_context("b")) as cb:
                b = await cb.transport()
                await b.hello("b1")
                first = [
                    json.loads((await b.next_delivery()).envelope_json)["data"]["n"]
                    for _ in range(3)
                ]
                assert first == [0, 1, 2]
                await b.close()
            async with raw_client(port, pki.client_ssl_context("b")) as cb:
                b = await cb.transport()
                await b.hello("b2")
                again = [json.loads((await b.next_delivery()).envelope_json) for _ in range(3)]
                assert [e["data"]["n"] for e in again] == [0, 1, 2]
                assert all(e["meta"]["attempt"] == 2 for e in again)


async def test_silent_tcp_client_is_dropped_after_handshake_timeout(
    pki: TestPKI, autojump_clock: trio.testing.MockClock
) -> None:
    config = make_config(["a"], limits={"handshake_timeout": 7.0})
    async with open_test_server(config, pki) as server:
        stream = await trio.open_tcp_stream("127.0.0.1", server.address.port)
        async with stream:
            started = trio.current_time()
            assert await stream.receive_some() == b""  # the server hung up
            assert trio.current_time() - started >= 7.0
        assert server.statistics()["refused_handshakes"] == 1


async def test_server_advertises_its_stream_limit(pki: TestPKI) -> None:
    import h2.exceptions

    config = make_config(["a"], limits={"max_concurrent_streams": 2})
    with trio.fail_after(10):
        async with open_test_server(config, pki) as server:
            async with raw_client(server.address.port, pki.client_ssl_context("a")) as ca:
                first = await ca.transport()
                await first.hello("one")
                second = await ca.transport()
                await second.hello("two")
                with pytest.raises(h2.exceptions.TooManyStreamsError):
                    await ca.transport()


async def test_unary_call_without_its_request_times_out(
    pki: TestPKI, autojump_clock: trio.testing.MockClock
) -> None:
    config = make_config(["a"], limits={"hello_timeout": 5.0})
    async with open_test_server(config, pki) as server:
        async with raw_client(server.address.port, pki.client_ssl_context("a")) as ca:
            stream = await ca.client.rpc("GetState", pb.GetStateRequest, pb.GetStateResponse)
            started = trio.current_time()
            assert await stream.receive_message() is None  # nothing sent: the server gives up
            status = stream.end_stream_event.status
            assert (status.status_code.name, status.status_message) == (
                "DEADLINE_EXCEEDED",
                "request_timeout",
            )
            assert trio.current_time() - started >= 5.0
