"""A stock grpcio client, generated from the same .proto, works against the server."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import trio
from grpc_tools import protoc  # type: ignore[import-untyped]

from mas.testing import TestPKI, make_config, open_test_server

ROOT = Path(__file__).resolve().parents[2]
CLIENT = Path(__file__).with_name("grpcio_client.py")


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
    assert seen["send_message_id"] is True
    assert seen["delivered"] == ["note", {"n": 1}, "legacy"]
    assert seen["request_correlation_matches"] is True
    assert seen["reply"] == ["answer", {"ok": True}, True]
    assert seen["state"] == {"k": "[1, null, true]"}
    assert seen["state_after_reset"] == {}
    assert seen["discovered"] == [["legacy", "ACTIVE"]]
    assert seen["denied"] == ["PERMISSION_DENIED", "not_authorized"]
