"""TLS renegotiation, attempted for real with ``openssl s_client`` against ``mas serve``.

Python's ``ssl`` cannot renegotiate as a client, so the attempt is OpenSSL's own client:
its ``R`` command starts a TLS 1.2 renegotiation on the open connection (each one a full
handshake the server would pay for, on the client's demand). TLS 1.3 has no
renegotiation at all. The refusal is an alert the server writes while it reads, which
must not collide with its writer (the fixture fails on any traceback in the log).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import trio

from mas.testing import TestPKI

OPENSSL = shutil.which("openssl")  # needed: these tests fail without it, never skip
_SERVER_SETTINGS = b"\x04\x00\x00\x00\x00\x00"  # a SETTINGS frame's type, flags, stream 0


async def _renegotiate(port: int, certs: Path, version: str) -> tuple[int, str]:
    """Connect with ``openssl s_client -<version>`` as mallet, type ``R``; (status, output)."""
    assert OPENSSL is not None, "install the openssl command line tool to run this test"
    command = [
        OPENSSL,
        "s_client",
        "-connect",
        f"127.0.0.1:{port}",
        f"-{version}",
        "-cert",
        str(certs / "mallet.pem"),
        "-key",
        str(certs / "mallet.key"),
        "-CAfile",
        str(certs / "ca.pem"),
        "-alpn",
        "h2",
    ]
    process = await trio.lowlevel.open_process(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    assert process.stdin is not None
    assert process.stdout is not None
    output = bytearray()
    try:
        # The server's HTTP/2 SETTINGS come first: were they to arrive during the
        # renegotiation, the client would fail on them ("unexpected record"), not on a no.
        with trio.fail_after(10):
            while _SERVER_SETTINGS not in output.partition(b"Verify return code")[2]:
                chunk = await process.stdout.receive_some()
                assert chunk, output.decode(errors="replace")
                output += chunk
        await process.stdin.send_all(b"R\n")
        # A refused renegotiation ends s_client; an accepted one leaves it connected
        # until its input ends, so stop reading after a while in any case.
        with trio.move_on_after(5):
            while chunk := await process.stdout.receive_some():
                output += chunk
        await process.stdin.aclose()
        with trio.fail_after(10):
            while chunk := await process.stdout.receive_some():
                output += chunk
            status = await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return status, output.decode(errors="replace")


async def test_client_initiated_tls12_renegotiation_is_refused(
    hostile_server: Any, pki: TestPKI
) -> None:
    with hostile_server() as server, trio.fail_after(30):
        certs = server.log_path.parent / "certs"
        status, output = await _renegotiate(server.port, certs, "tls1_2")
        assert "Protocol  : TLSv1.2" in output, output  # the handshake itself succeeded
        assert "RENEGOTIATING" in output, output  # and the client did ask
        assert "no renegotiation" in output, output  # the server said no
        assert status != 0
        assert server.alive()


async def test_tls13_has_no_renegotiation_to_attempt(hostile_server: Any, pki: TestPKI) -> None:
    with hostile_server() as server, trio.fail_after(30):
        certs = server.log_path.parent / "certs"
        status, output = await _renegotiate(server.port, certs, "tls1_3")
        assert "New, TLSv1.3" in output, output
        assert "wrong ssl version" in output, output  # refused by the protocol, client side
        assert status != 0
