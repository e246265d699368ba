"""State values as the seed system's SDK sends them, through a stock grpcio client.

That SDK sends ``str(value)``; its values come back to it unchanged, reach a mas agent as
the strings they are, and what a mas agent stores reaches it as JSON text.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import trio
from grpc_tools import protoc  # type: ignore[import-untyped]

from mas import Agent
from mas.server import MasServer
from mas.testing import TestPKI, make_config, open_test_server

ROOT = Path(__file__).resolve().parents[2]
CLIENT = Path(__file__).with_name("grpcio_state_client.py")
sys.path.insert(0, str(CLIENT.parent))
from grpcio_state_client import SEED_VALUES  # noqa: E402


class Legacy(Agent[dict[str, Any]]):
    pass


def _generate_stubs(into: Path) -> None:
    # Without the package path, so the stubs never shadow the `mas` package.
    proto_dir = ROOT / "proto" / "mas" / "runtime" / "v1"
    argv = ["protoc", f"-I{proto_dir}", f"--python_out={into}", f"--grpc_python_out={into}"]
    assert protoc.main([*argv, "runtime.proto"]) == 0


async def _stock_client(
    server: MasServer, pki: TestPKI, tmp_path: Path, mode: str
) -> dict[str, Any]:
    files = pki.write(tmp_path / "pki", ["legacy"])
    cert, key = files.agents["legacy"]
    assert server.address is not None
    result = await trio.run_process(
        [
            *(sys.executable, str(CLIENT), str(tmp_path), str(server.address.port)),
            *(str(files.ca_path), str(cert), str(key), mode),
        ],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    seen: dict[str, Any] = json.loads(result.stdout)
    return seen


async def test_seed_sdk_state_values_round_trip_and_meet_mas_agents(
    pki: TestPKI, tmp_path: Path
) -> None:
    _generate_stubs(tmp_path)
    with trio.fail_after(60):
        async with open_test_server(make_config(["legacy"]), pki) as server:
            seen = await _stock_client(server, pki, tmp_path, "write")
            assert seen["state"] == SEED_VALUES  # unchanged, none refused
            assert seen["version"] == 1
            assert seen["stale"] == ["ABORTED", "state_conflict"]
            assert seen["conditional_version"] == 2
            assert seen["empty_key"] == ["INVALID_ARGUMENT", "invalid_state_key"]
            assert seen["final"] == {**SEED_VALUES, "name": "alice"}

            assert server.address is not None
            agent = Legacy(
                "legacy",
                server_addr=f"127.0.0.1:{server.address.port}",
                tls=pki.client_ssl_context("legacy"),
            )
            async with agent:
                assert agent.state == {**SEED_VALUES, "name": "alice"}  # strings, as sent
                mine = {"name": "bob", "on": True, "off": None, "n": 3, "deep": [1, {"a": None}]}
                await agent.update_state(mine)
            async with agent:  # the mas SDK's own values keep their JSON round trip
                assert agent.state == {**SEED_VALUES, **mine}

            seen = await _stock_client(server, pki, tmp_path, "read")
            assert seen["final"] == {
                **SEED_VALUES,
                "name": "bob",
                "on": "true",
                "off": "null",
                "n": "3",
                "deep": '[1,{"a":null}]',
            }
