"""Compressed gRPC messages from a stock grpcio client, and a compression bomb."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import trio
from attack_harness import scaled, under_attack
from grpc_tools import protoc  # type: ignore[import-untyped]

from mas.testing import TestPKI

ROOT = Path(__file__).resolve().parents[2]
CLIENT = Path(__file__).with_name("grpcio_gzip_client.py")


def _generate_stubs(into: Path) -> None:
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


async def test_gzip_from_a_stock_client_works_and_a_bomb_is_refused_without_inflating(
    hostile_server: Any, pki: TestPKI, tmp_path: Path
) -> None:
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    _generate_stubs(stubs)
    bomb = scaled(64 * 1024 * 1024)  # bytes once inflated; about 64 KB compressed
    with hostile_server() as server:
        certs = server.log_path.parent / "certs"
        seen: dict[str, Any] = {}

        async def attack() -> None:
            result = await trio.run_process(
                [
                    sys.executable,
                    str(CLIENT),
                    str(stubs),
                    str(server.port),
                    str(certs / "ca.pem"),
                    str(certs / "mallet.pem"),
                    str(certs / "mallet.key"),
                    str(bomb),
                ],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
            assert result.returncode == 0, result.stderr.decode()
            seen.update(json.loads(result.stdout))

        with trio.fail_after(90):
            report = await under_attack("gzip bomb", server, pki, attack)
    assert seen["update"] == "ok"
    assert seen["state"] == {"k": '"small value"'}
    assert seen["bomb"] == ["RESOURCE_EXHAUSTED", "message_too_large"]
    assert seen["after_bomb"] == "ok"  # the same connection goes on
    assert report.rss_growth_kib < 20 * 1024  # the limit is 1 MiB; the bomb never inflated
