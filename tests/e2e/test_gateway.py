"""The gateway pipeline end to end: each decision reaches the caller and the audit trail."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from rawclient import CallFailed, raw_client, sessions

from mas import (
    Agent,
    AgentMessage,
    CircuitOpenError,
    PermissionDeniedError,
    RateLimitedError,
    UnauthenticatedError,
)
from mas._proto import runtime_pb2 as pb
from mas.audit.record import AuditRecord
from mas.cli.audit.files import verify_file
from mas.config import MasConfig
from mas.server import MasServer
from mas.testing import TestPKI, make_config, open_test_server

PAIR = [{"type": "allow_bidirectional", "agents": ["a", "b"]}]


class Sink(Agent[dict[str, Any]]):
    def __init__(self, agent_id: str, **kwargs: Any) -> None:
        super().__init__(agent_id, **kwargs)
        self.received: list[dict[str, Any]] = []
        self.arrived = trio.Event()

    @Agent.on("note")
    async def note(self, message: AgentMessage) -> None:
        self.received.append(message.data)
        self.arrived.set()

    @Agent.on("fail")
    async def fail(self, message: AgentMessage) -> None:
        raise RuntimeError("always fails")


def _agent(cls: type[Agent[Any]], agent_id: str, server: MasServer, pki: TestPKI) -> Any:
    assert server.address is not None
    return cls(
        agent_id,
        server_addr=f"127.0.0.1:{server.address.port}",
        tls=pki.client_ssl_context(agent_id),
    )


async def _records(server: MasServer) -> list[AuditRecord]:
    await server.audit.flush()
    return await server.store.audit_records()


def _decisions(records: list[AuditRecord]) -> list[str]:
    return [r.decision for r in records]


async def test_allowed_and_denied_messages_are_audited_in_one_chain(pki: TestPKI) -> None:
    config = make_config(["a", "b", "c"], PAIR)
    with trio.fail_after(20):
        async with open_test_server(config, pki) as server:
            async with _agent(Agent, "a", server, pki) as a, _agent(Sink, "b", server, pki) as b:
                await a.send("b", "note", {"n": 1})
                await b.arrived.wait()
                with pytest.raises(PermissionDeniedError) as denied:
                    await a.send("c", "note", {})
                assert denied.value.reason == "not_authorized"
            records = await _records(server)
            decisions = _decisions(records)
            assert decisions.count("ALLOWED") == 1
            assert "AUTHZ_DENIED" in decisions
            assert "DELIVERED" in decisions
            allowed = next(r for r in records if r.decision == "ALLOWED")
            assert (allowed.sender_id, allowed.target_id, allowed.message_type) == (
                "a",
                "b",
                "note",
            )
            assert len(allowed.payload_sha256) == 64
            from mas.audit.chain import verify

            assert verify(records, None).ok


async def test_rate_limited_sender_gets_retry_after(
    pki: TestPKI, autojump_clock: trio.testing.MockClock
) -> None:
    config = make_config(
        ["a", "b"], PAIR, gateway={"rate_limit": {"per_minute": 3, "per_hour": 100}}
    )
    async with open_test_server(config, pki) as server:
        async with _agent(Agent, "a", server, pki) as a:
            for n in range(3):
                await a.send("b", "note", {"n": n})
            with pytest.raises(RateLimitedError) as limited:
                await a.send("b", "note", {"n": 3})
            assert limited.value.code == "RESOURCE_EXHAUSTED"
            assert limited.value.retry_after is not None
            assert 0 < limited.value.retry_after <= 20.0
            await trio.sleep(limited.value.retry_after + 0.01)
            await a.send("b", "note", {"n": 4})  # the denied attempt consumed nothing
        assert "RATE_LIMITED" in _decisions(await _records(server))


async def test_per_agent_rate_limit_override(
    pki: TestPKI, autojump_clock: trio.testing.MockClock
) -> None:
    config = make_config(
        [{"agent_id": "a", "rate_limit": {"per_minute": 1}}, "b"],
        PAIR,
        gateway={"rate_limit": {"per_minute": 50}},
    )
    async with open_test_server(config, pki) as server:
        async with _agent(Agent, "a", server, pki) as a, _agent(Agent, "b", server, pki) as b:
            await a.send("b", "note", {})
            with pytest.raises(RateLimitedError):
                await a.send("b", "note", {})
            for _ in range(5):
                await b.send("a", "note", {})


async def test_failing_target_opens_its_circuit(
    pki: TestPKI, autojump_clock: trio.testing.MockClock
) -> None:
    config = make_config(
        ["a", "b"],
        PAIR,
        limits={"max_attempts": 1},
        gateway={"circuit_breaker": {"failure_threshold": 2, "timeout_seconds": 30}},
    )
    async with open_test_server(config, pki) as server:
        async with _agent(Agent, "a", server, pki) as a, _agent(Sink, "b", server, pki):
            await a.send("b", "fail", {})
            await a.send("b", "fail", {})
            await trio.sleep(1)  # both handlers fail: two nacks
            with pytest.raises(CircuitOpenError) as opened:
                await a.send("b", "note", {})
            assert (opened.value.code, opened.value.reason) == (
                "FAILED_PRECONDITION",
                "circuit_open",
            )
            await trio.sleep(31)  # half-open: one trial goes through
            await a.send("b", "note", {})
        decisions = _decisions(await _records(server))
        assert "CIRCUIT_OPEN" in decisions
        assert "DLQ" in decisions


async def test_dlp_blocks_redacts_and_alerts(pki: TestPKI) -> None:
    config = make_config(["a", "b"], PAIR)
    with trio.fail_after(20):
        async with open_test_server(config, pki) as server:
            async with _agent(Agent, "a", server, pki) as a, _agent(Sink, "b", server, pki) as b:
                with pytest.raises(PermissionDeniedError) as blocked:
                    await a.send("b", "note", {"card": "4111 1111 1111 1111"})
                assert blocked.value.reason == "dlp_blocked"
                await a.send("b", "note", {"patient": {"ssn": "123-45-6789"}})
                await a.send("b", "note", {"contact": "jane@example.com"})
                while len(b.received) < 2:
                    b.arrived = trio.Event()
                    await b.arrived.wait()
            redacted, alerted = b.received
            assert "123-45-6789" not in json.dumps(redacted)
            assert redacted["patient"]["ssn"].endswith("6789")
            assert alerted == {"contact": "jane@example.com"}
            records = await _records(server)
            blocked_record = next(r for r in records if r.decision == "DLP_BLOCKED")
            assert [v.rule_id for v in blocked_record.violations] == ["credit_card"]
            assert "4111" not in json.dumps([list(r.violations) for r in records], default=str)
            assert {"DLP_REDACTED", "ALERT"} <= set(_decisions(records))


async def test_refused_identity_is_audited(pki: TestPKI) -> None:
    with trio.fail_after(20):
        async with open_test_server(make_config(["a"]), pki) as server:
            assert server.address is not None
            async with raw_client(server.address.port, pki.client_ssl_context("mallory")) as client:
                with pytest.raises(CallFailed):
                    await client.unary("GetState", pb.GetStateRequest(), pb.GetStateResponse)
            records = await _records(server)
            assert [(r.decision, r.reason, r.sender_id) for r in records] == [
                ("AUTHN_DENIED", "not_allowlisted", "mallory")
            ]


def _reloaded(config: MasConfig, **changes: Any) -> MasConfig:
    import msgspec

    return msgspec.structs.replace(config, **changes)


async def test_reload_revokes_permissions_agents_and_certificates(pki: TestPKI) -> None:
    from mas.config import RevokedConfig

    config = make_config(
        ["a", "b", "c"], [*PAIR, {"type": "allow", "sender": "c", "targets": ["a"]}]
    )
    with trio.fail_after(20):
        async with open_test_server(config, pki) as server:
            async with _agent(Agent, "a", server, pki) as a:
                await a.send("b", "note", {})
                server.reload(_reloaded(config, permissions=[]))
                with pytest.raises(PermissionDeniedError):
                    await a.send("b", "note", {})
            c = _agent(Agent, "c", server, pki)
            async with trio.open_nursery() as nursery:
                await nursery.start(c.run)
                assert server.statistics()["sessions"] == 1
                without_c = make_config(["a", "b"], PAIR)
                server.reload(without_c)
                with trio.fail_after(5):
                    await server.registry.wait_empty()
                nursery.cancel_scope.cancel()
            with pytest.raises(UnauthenticatedError):
                await _agent(Agent, "c", server, pki).run()
            fingerprint = pki.agent_key_pair("b")
            from cryptography import x509

            from mas.identity import identity_from_certificate

            der = x509.load_pem_x509_certificate(fingerprint.cert_pem).public_bytes(
                encoding=__import__(
                    "cryptography.hazmat.primitives.serialization", fromlist=["Encoding"]
                ).Encoding.DER
            )
            identity = identity_from_certificate(der)
            server.reload(
                _reloaded(
                    without_c, revoked=RevokedConfig(fingerprints=[identity.fingerprint_sha256])
                )
            )
            with pytest.raises(UnauthenticatedError) as revoked:
                await _agent(Agent, "b", server, pki).run()
            assert revoked.value.reason == "certificate_revoked"


async def test_audit_file_is_a_verifiable_copy_of_the_chain(pki: TestPKI, tmp_path: Path) -> None:
    audit_file = tmp_path / "audit.jsonl"
    config = make_config(["a", "b"], PAIR, gateway={"audit": {"file_path": str(audit_file)}})
    with trio.fail_after(20):
        async with open_test_server(config, pki) as server:
            async with _agent(Agent, "a", server, pki) as a, _agent(Sink, "b", server, pki) as b:
                for n in range(5):
                    await a.send("b", "note", {"n": n})
                while len(b.received) < 5:
                    b.arrived = trio.Event()
                    await b.arrived.wait()
            await server.drain(1)  # flushes the audit queue and lets the file catch up
            stored = await server.store.audit_records()
    status, message = verify_file(audit_file, None)
    assert status == 0, message
    lines = [json.loads(line) for line in audit_file.read_text().splitlines()]
    assert [line["hash"] for line in lines] == [r.hash for r in stored]


async def test_server_runs_with_telemetry_enabled(pki: TestPKI) -> None:
    config = make_config(["a", "b"], PAIR, gateway={"telemetry": {"enabled": True}})
    with trio.fail_after(20):
        async with open_test_server(config, pki) as server:
            async with _agent(Agent, "a", server, pki) as a:
                await a.send("b", "note", {})
            assert server.statistics()["decisions"]["ALLOWED"] == 1


async def test_a_reload_applies_every_limit_at_once_and_names_what_needs_a_restart(
    pki: TestPKI, caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config(["a", "b"], PAIR)
    with trio.fail_after(20):
        async with open_test_server(config, pki) as server:
            async with sessions(server, pki, "a", "b") as (a, b):
                request = await a.call("request", target_id="b", message_type="q", data_json="{}")
                assert not request.HasField("error")
                await b.next_delivery()
                # The message size limit, the ack timeout and the listener's limits apply
                # at once; the requester removed from the allowlist gets no reply.
                reloaded = _reloaded(
                    make_config(["b"], [], limits={"max_message_bytes": 64, "ack_timeout": 7.0}),
                    server_listen_addr="127.0.0.1:1",
                )
                server.reload(reloaded)
                refused = await b.call(
                    "reply",
                    correlation_id=request.correlation_id,
                    message_type="r",
                    data_json="{}",
                )
                assert (refused.error.code, refused.error.message) == (
                    "PERMISSION_DENIED",
                    "not_authorized",
                )
                big = await b.call(
                    "send", target_id="b", message_type="t", data_json='{"x": "' + "y" * 100 + '"}'
                )
                assert big.error.message == "message_too_large"
                [session] = server.registry.of_agent("b")
                assert session.window.ack_timeout == 7.0
    said = [
        r.getMessage() for r in caplog.records if "apply only after a restart" in r.getMessage()
    ]
    assert said == ["reload: server_listen_addr changed; these apply only after a restart"]
