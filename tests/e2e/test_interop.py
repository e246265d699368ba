"""A stock grpcio client, generated from the same .proto, works against the server."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import trio
from cryptography import x509
from grpc_tools import protoc  # type: ignore[import-untyped]

from mas.pki import KeyPair, write_key_pair
from mas.testing import TestPKI, make_config, open_test_server

ROOT = Path(__file__).resolve().parents[2]
CLIENT = Path(__file__).with_name("grpcio_client.py")
ERRORS_CLIENT = Path(__file__).with_name("grpcio_errors_client.py")
COMPATIBILITY = ROOT / "docs" / "compatibility.md"


def _generate_stubs(into: Path) -> None:
    # Generated without the package path, so the stubs never shadow the `mas` package.
    proto_dir = ROOT / "proto" / "mas" / "runtime" / "v1"
    code = protoc.main(
        [
            "protoc",
            f"-I{proto_dir}",
            f"--python_out={into}",
            f"--grpc_python_out={into}",
            "runtime.proto",
        ]
    )
    assert code == 0


async def test_stock_grpcio_client_uses_transport_and_unary_rpcs(
    pki: TestPKI, tmp_path: Path
) -> None:
    _generate_stubs(tmp_path)
    files = pki.write(tmp_path / "pki", ["legacy"])
    cert, key = files.agents["legacy"]
    config = make_config(
        [{"agent_id": "legacy", "capabilities": ["legacy"]}, "other"],
        [{"type": "allow", "sender": "legacy", "targets": ["legacy"]}],
    )
    with trio.fail_after(60):
        async with open_test_server(config, pki) as server:
            result = await trio.run_process(
                [
                    sys.executable,
                    str(CLIENT),
                    str(tmp_path),
                    str(server.address.port),
                    str(files.ca_path),
                    str(cert),
                    str(key),
                ],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
    assert result.returncode == 0, result.stderr.decode()
    seen = json.loads(result.stdout)
    assert seen["welcome"] == ["legacy", "legacy-1"]
    assert seen["reply_acks"] is False  # it announced nothing: every delivery needs its Ack
    assert seen["late_results"] is False  # and every Result comes as soon as it is routed
    assert seen["send_message_id"] is True
    assert seen["delivered"] == ["note", {"n": 1}, "legacy"]
    assert seen["request_correlation_matches"] is True
    assert seen["reply"] == ["answer", {"ok": True}, True]
    assert seen["state"] == {"k": "[1, null, true]"}
    assert seen["state_after_reset"] == {}
    assert seen["discovered"] == [["legacy", "ACTIVE"]]
    assert seen["denied"] == ["PERMISSION_DENIED", "not_authorized"]


# What each scenario of grpcio_errors_client.py must get: (gRPC status, details).
EXPECTED: dict[str, tuple[str, str]] = {
    "identity.missing_spiffe_san": ("UNAUTHENTICATED", "missing_spiffe_san"),
    "identity.dns_only": ("UNAUTHENTICATED", "invalid_spiffe_san"),
    "identity.two_uris": ("UNAUTHENTICATED", "invalid_spiffe_san"),
    "identity.other_trust_domain": ("UNAUTHENTICATED", "invalid_spiffe_format"),
    "identity.ca_as_leaf": ("UNAUTHENTICATED", "ca_certificate"),
    "identity.stranger": ("UNAUTHENTICATED", "not_allowlisted"),
    "identity.revoked": ("UNAUTHENTICATED", "certificate_revoked"),
    "request.no_instance": ("FAILED_PRECONDITION", "session_required"),
    "send.unbound_instance": ("FAILED_PRECONDITION", "instance_not_bound"),
    "send.empty_type": ("INVALID_ARGUMENT", "invalid_message_type"),
    "send.too_large": ("RESOURCE_EXHAUSTED", "message_too_large"),
    "send.not_an_object": ("INVALID_ARGUMENT", "invalid_payload"),
    "send.not_permitted": ("PERMISSION_DENIED", "not_authorized"),
    "send.dlp": ("PERMISSION_DENIED", "dlp_blocked"),
    "request.negative_timeout": ("INVALID_ARGUMENT", "invalid_timeout"),
    "send.offline_0": ("OK", ""),  # an offline agent's messages are queued...
    "send.offline_1": ("OK", ""),
    "send.offline_2": ("RESOURCE_EXHAUSTED", "queue_full"),  # ...up to max_queue_length
    "request.ok": ("OK", ""),
    "reply.wrong_agent": ("PERMISSION_DENIED", "not_authorized"),
    "reply.bad_error_reply": ("INVALID_ARGUMENT", "invalid_error_reply"),
    "reply.ok": ("OK", ""),
    "reply.second": ("INVALID_ARGUMENT", "unknown_correlation_id"),
    "reply.made_up": ("INVALID_ARGUMENT", "unknown_correlation_id"),
    "send.rate_first": ("OK", ""),
    "send.rate_second": ("RESOURCE_EXHAUSTED", "rate_limited"),
    "send.to_tripped": ("FAILED_PRECONDITION", "circuit_open"),
    "state.seed_values": ("OK", ""),
    "state.empty_key": ("INVALID_ARGUMENT", "invalid_state_key"),
    "state.not_json": ("INVALID_ARGUMENT", "invalid_state_value"),
    "state.too_large": ("RESOURCE_EXHAUSTED", "state_too_large"),
    "state.stale": ("ABORTED", "state_conflict"),
    "transport.no_hello": ("INVALID_ARGUMENT", "hello_required"),
    "transport.bad_instance": ("INVALID_ARGUMENT", "invalid_instance_id"),
    "transport.too_many": ("RESOURCE_EXHAUSTED", "too_many_sessions"),
    "transport.replaced": ("ABORTED", "replaced_by_new_session"),
    "transport.second_hello": ("INVALID_ARGUMENT", "duplicate_hello"),
    "transport.silent": ("DEADLINE_EXCEEDED", "hello_timeout"),
    "rpc.unknown_method": (
        "UNIMPLEMENTED",
        "unknown method /mas.runtime.v1.RuntimeService/NoSuchMethod",
    ),
    "request.short": ("OK", ""),
    "reply.late": ("FAILED_PRECONDITION", "correlation_id_expired"),
}


def _table_rows() -> list[tuple[str, str, str]]:
    """(status, reason, checked-by) of every row of the table in docs/compatibility.md."""
    rows = []
    for line in COMPATIBILITY.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 5 and re.fullmatch(r"`[A-Z_]+`", cells[0]):
            rows.append((cells[0].strip("`"), cells[1].strip("`"), cells[4]))
    return rows


def _certificates(pki: TestPKI, directory: Path) -> tuple[dict[str, list[str]], int]:
    """The client's certificate files by name, and the serial of the revoked one."""
    pairs: dict[str, KeyPair] = {
        agent: pki.agent_key_pair(agent)
        for agent in ("legacy", "spammer", "tripped", "intruder", "twin", "stranger", "revoked")
    }
    pairs["missing_spiffe_san"] = pki.leaf(common_name="nosan")
    pairs["dns_only"] = pki.leaf(common_name="dns", dns=["dns.example"])
    pairs["two_uris"] = pki.leaf(
        common_name="two", uris=["spiffe://mas/agent/legacy", "spiffe://mas/agent/sink"]
    )
    pairs["other_trust_domain"] = pki.leaf(common_name="td", uris=["spiffe://other/agent/legacy"])
    pairs["ca_as_leaf"] = pki.leaf(common_name="ca", uris=["spiffe://mas/agent/legacy"], is_ca=True)
    directory.mkdir()
    files: dict[str, list[str]] = {}
    for name, pair in pairs.items():
        cert, key = directory / f"{name}.pem", directory / f"{name}.key"
        write_key_pair(pair, cert, key)
        files[name] = [str(cert), str(key)]
    serial = x509.load_pem_x509_certificate(pairs["revoked"].cert_pem).serial_number
    return files, serial


async def test_stock_grpcio_client_meets_every_status_and_reason_of_the_table(
    pki: TestPKI, tmp_path: Path
) -> None:
    _generate_stubs(tmp_path)
    certs, revoked_serial = _certificates(pki, tmp_path / "certs")
    pki.write(tmp_path / "pki", [])
    config = make_config(
        [
            {"agent_id": "legacy", "capabilities": ["legacy"]},
            *("sink", "full", "other", "tripped", "intruder", "twin", "revoked"),
            {"agent_id": "spammer", "rate_limit": {"per_minute": 1}},
        ],
        [
            {"type": "allow", "sender": "legacy", "targets": ["legacy", "sink", "full", "tripped"]},
            {"type": "allow", "sender": "spammer", "targets": ["spammer"]},
        ],
        limits={
            "max_message_bytes": 4096,
            "max_queue_length": 2,
            "max_sessions_per_agent": 1,
            "hello_timeout": 1.0,
            "max_attempts": 1,
            "max_state_bytes": 1000,
        },
        gateway={"circuit_breaker": {"failure_threshold": 1, "timeout_seconds": 60}},
        revoked={"serials": [str(revoked_serial)]},
    )
    with trio.fail_after(90):
        async with open_test_server(config, pki) as server:
            assert server.address is not None
            setup = tmp_path / "setup.json"
            setup.write_text(
                json.dumps(
                    {
                        "stubs": str(tmp_path),
                        "port": server.address.port,
                        "ca": str(tmp_path / "pki" / "ca.pem"),
                        "certs": certs,
                    }
                )
            )
            result = await trio.run_process(
                [sys.executable, str(ERRORS_CLIENT), str(setup)],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
    assert result.returncode == 0, result.stderr.decode()
    seen: dict[str, Any] = json.loads(result.stdout)

    got = {name: tuple(seen.get(name, ("missing", ""))) for name in EXPECTED}
    assert got == EXPECTED
    assert seen["welcome"] == ["legacy", "legacy-1", "True"]  # the fast path is announced
    assert ["legacy", "ACTIVE"] in seen["discovered"]  # the seed's spelling
    assert ["sink", "INACTIVE"] in seen["discovered"]
    assert json.loads(seen["state"][0]) == {  # str(value), as the seed's SDK sends it
        "count": "42",
        "flag": "True",
        "nothing": "None",
        "name": "bob",
    }

    # The table in docs/compatibility.md is the one checked here: every refusal met is in
    # it, and every row it says this test checks was met.
    met = {
        (code, "unknown method /<service>/<method>" if code == "UNIMPLEMENTED" else reason)
        for code, reason in EXPECTED.values()
        if code != "OK"
    }
    rows = _table_rows()
    assert met <= {(code, reason) for code, reason, _ in rows}
    assert {(code, reason) for code, reason, by in rows if "interop" in by} == met
