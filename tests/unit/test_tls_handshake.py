"""Real mTLS handshakes over loopback with TestPKI and dev PKI certificates."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from mas.errors import IdentityError
from mas.identity import identity_from_certificate
from mas.pki import client_ssl_context, server_ssl_context, write_dev_pki
from mas.testing import TestPKI

HANDSHAKE_TIMEOUT = 10.0  # seconds; a loopback handshake takes milliseconds


@dataclass
class Handshake:
    """What each side saw of one connection."""

    peer_der: bytes | None = None
    server_alpn: str | None = None
    client_alpn: str | None = None
    server_error: Exception | None = None
    client_error: Exception | None = None
    client_received: bytes = b""


async def _serve_one(
    listener: trio.SocketListener, context: ssl.SSLContext, out: Handshake
) -> None:
    tls = trio.SSLStream(await listener.accept(), context, server_side=True)
    async with tls:
        try:
            await tls.do_handshake()
        except trio.BrokenResourceError as exc:
            out.server_error = exc
            return
        out.peer_der = tls.getpeercert(binary_form=True)
        out.server_alpn = tls.selected_alpn_protocol()
        await tls.send_all(b"ok")


async def _connect(port: int, context: ssl.SSLContext, hostname: str, out: Handshake) -> None:
    tls = trio.SSLStream(
        await trio.open_tcp_stream("127.0.0.1", port), context, server_hostname=hostname
    )
    async with tls:
        try:
            await tls.do_handshake()
            out.client_alpn = tls.selected_alpn_protocol()
            # Under TLS 1.3 the server judges the client certificate after the client's
            # handshake is done, so a refusal shows up on the first read.
            while len(out.client_received) < 2:
                data = await tls.receive_some()
                if not data:
                    break
                out.client_received += data
        except trio.BrokenResourceError as exc:
            out.client_error = exc


async def handshake(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext, hostname: str = "127.0.0.1"
) -> Handshake:
    """Run one client against one server connection on 127.0.0.1 and report both sides."""
    out = Handshake()
    with trio.fail_after(HANDSHAKE_TIMEOUT):
        (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
        async with listener:
            port = listener.socket.getsockname()[1]
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_serve_one, listener, server_context, out)
                await _connect(port, client_context, hostname, out)
    return out


async def test_agent_certificate_completes_mtls_and_names_the_agent() -> None:
    pki = TestPKI()
    out = await handshake(pki.server_ssl_context(), pki.client_ssl_context("alice"))
    assert out.server_error is None
    assert out.client_error is None
    assert out.client_received == b"ok"
    assert out.peer_der is not None
    identity = identity_from_certificate(out.peer_der)
    assert identity.agent_id == "alice"
    assert identity.spiffe_id == "spiffe://mas/agent/alice"


async def test_alpn_negotiates_h2() -> None:
    pki = TestPKI()
    out = await handshake(pki.server_ssl_context(), pki.client_ssl_context("alice"))
    assert out.server_alpn == "h2"
    assert out.client_alpn == "h2"


async def test_client_without_certificate_is_refused_by_the_server() -> None:
    pki = TestPKI()
    out = await handshake(pki.server_ssl_context(), pki.client_ssl_context())
    assert isinstance(out.server_error, trio.BrokenResourceError)
    assert out.peer_der is None
    assert out.client_received == b""


async def test_client_certificate_from_another_ca_is_refused() -> None:
    pki, stranger = TestPKI(), TestPKI()
    client = pki.client_ssl_context(key_pair=stranger.agent_key_pair("alice"))
    out = await handshake(pki.server_ssl_context(), client)
    assert isinstance(out.server_error, trio.BrokenResourceError)
    assert out.peer_der is None
    assert out.client_received == b""


async def test_client_refuses_a_server_from_another_ca() -> None:
    pki, stranger = TestPKI(), TestPKI()
    out = await handshake(stranger.server_ssl_context(), pki.client_ssl_context("alice"))
    assert isinstance(out.client_error, trio.BrokenResourceError)
    assert isinstance(out.client_error.__cause__, ssl.SSLCertVerificationError)
    assert out.peer_der is None


async def test_client_refuses_a_server_certificate_for_another_host() -> None:
    pki = TestPKI()
    out = await handshake(
        pki.server_ssl_context(), pki.client_ssl_context("alice"), hostname="mas.example"
    )
    assert isinstance(out.client_error, trio.BrokenResourceError)
    assert isinstance(out.client_error.__cause__, ssl.SSLCertVerificationError)


async def test_ca_certificate_as_client_passes_tls_but_not_identity() -> None:
    # OpenSSL accepts a CA certificate as a client leaf; identity_from_certificate must not.
    pki = TestPKI()
    bad = pki.leaf(common_name="alice", uris=["spiffe://mas/agent/alice"], is_ca=True)
    out = await handshake(pki.server_ssl_context(), pki.client_ssl_context(key_pair=bad))
    assert out.server_error is None
    assert out.peer_der is not None
    with pytest.raises(IdentityError) as info:
        identity_from_certificate(out.peer_der)
    assert info.value.reason == "ca_certificate"


async def test_dev_pki_files_give_strict_mtls(tmp_path: Path) -> None:
    paths = write_dev_pki(tmp_path, ["alice"])
    server = server_ssl_context(paths.ca_path, paths.server_cert_path, paths.server_key_path)
    client = client_ssl_context(paths.ca_path, *paths.agents["alice"])
    for context in (server, client):  # Python 3.13's defaults; our certificates must pass
        context.verify_flags |= ssl.VERIFY_X509_STRICT
    for hostname in ("127.0.0.1", "localhost"):
        out = await handshake(server, client, hostname)
        assert out.server_error is None
        assert out.client_error is None
        assert out.peer_der is not None
        assert identity_from_certificate(out.peer_der).agent_id == "alice"


def test_server_refuses_client_initiated_renegotiation(tmp_path: Path) -> None:
    # Python's ssl cannot start a renegotiation as a client, so the option itself is
    # checked, on the contexts that the server really loads (the dev PKI's and TestPKI's).
    paths = write_dev_pki(tmp_path, ["a"])
    for context in (
        server_ssl_context(paths.ca_path, paths.server_cert_path, paths.server_key_path),
        TestPKI().server_ssl_context(),
    ):
        assert context.options & ssl.OP_NO_RENEGOTIATION
