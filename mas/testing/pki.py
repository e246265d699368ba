"""``TestPKI``: a trustme CA that also signs SPIFFE agent certificates.

trustme makes the CA and the server certificate, but it treats every identity
as a host name and cannot put a URI in a subjectAltName, so agent certificates
are signed with ``cryptography`` using the trustme CA's own private key
(through ``mas.pki.CertificateAuthority.from_pem``). Everything chains to one
root, so the contexts made here trust each other and nothing else.
"""

from __future__ import annotations

import ssl
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from ..identity import DEFAULT_TRUST_DOMAIN
from ..pki import (
    CertificateAuthority,
    DevPKIPaths,
    KeyPair,
    base_client_context,
    base_server_context,
    dev_pki_paths,
    write_ca,
    write_key_pair,
)

if TYPE_CHECKING:
    import trustme

TRUSTME_MISSING: Final = (
    "mas.testing.TestPKI needs trustme, which comes with the test extra: "
    "pip install 'mas[test]' (or pip install trustme)"
)

SERVER_HOSTS: Final = ("127.0.0.1", "localhost", "::1")  # loopback, by name and by address


class TestPKI:
    """A test certificate authority with a loopback server certificate and agent certificates.

    ``TestPKI()`` costs a few milliseconds (EC keys); make one per test session.
    Agent key pairs are cached, so asking twice for ``"alice"`` gives the same
    certificate. Contexts are new on every call and safe to modify.
    """

    __test__ = False  # not a pytest test class, despite the name

    def __init__(self, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> None:
        """Raises ``ImportError`` naming the ``test`` extra when trustme is not installed."""
        try:
            import trustme
        except ImportError as exc:
            raise ImportError(TRUSTME_MISSING) from exc
        self.trust_domain = trust_domain
        self.ca: trustme.CA = trustme.CA()
        self.server_cert = self.ca.issue_cert(*SERVER_HOSTS)
        self.authority = CertificateAuthority.from_pem(
            self.ca.cert_pem.bytes(), self.ca.private_key_pem.bytes()
        )
        self._agents: dict[str, KeyPair] = {}

    @property
    def ca_cert_pem(self) -> bytes:
        """The root certificate in PEM."""
        return self.authority.cert_pem

    @property
    def server_key_pair(self) -> KeyPair:
        """The server certificate chain (for 127.0.0.1, localhost and ::1) and key."""
        chain = b"".join(blob.bytes() for blob in self.server_cert.cert_chain_pems)
        return KeyPair(cert_pem=chain, key_pem=self.server_cert.private_key_pem.bytes())

    def agent_key_pair(self, agent_id: str) -> KeyPair:
        """The certificate and key of ``agent_id`` (made on first use, then cached)."""
        pair = self._agents.get(agent_id)
        if pair is None:
            pair = self.authority.issue_agent(agent_id, self.trust_domain)
            self._agents[agent_id] = pair
        return pair

    def leaf(self, **kwargs: Any) -> KeyPair:
        """Sign an arbitrary leaf; keyword arguments go to ``CertificateAuthority.issue_leaf``.

        For negative tests: ``leaf(common_name="x")`` has no SAN,
        ``leaf(common_name="x", uris=[a, b])`` has two URIs, ``is_ca=True``
        makes a CA certificate to present as a client.
        """
        return self.authority.issue_leaf(**kwargs)

    def server_ssl_context(self) -> ssl.SSLContext:
        """A server context like ``mas.pki.server_ssl_context``, with this PKI's files."""
        context = base_server_context()
        self.ca.configure_trust(context)
        self.server_cert.configure_cert(context)
        return context

    def client_ssl_context(
        self, agent_id: str | None = None, *, key_pair: KeyPair | None = None
    ) -> ssl.SSLContext:
        """A client context that trusts this PKI's server and presents a client certificate.

        The certificate is ``agent_id``'s, or ``key_pair`` (which may come from
        another CA), or, with neither, none at all (for negative tests).
        """
        if agent_id is not None and key_pair is not None:
            raise ValueError("give agent_id or key_pair, not both")
        context = base_client_context()
        self.ca.configure_trust(context)
        if agent_id is not None:
            key_pair = self.agent_key_pair(agent_id)
        if key_pair is not None:
            _load_key_pair(context, key_pair)
        return context

    def write(self, directory: Path, agent_ids: Iterable[str]) -> DevPKIPaths:
        """Write ``ca.pem``, ``server.pem``/``server.key`` and agent files for a mas.yaml.

        Same layout and rules as ``mas.pki.write_dev_pki``; the agent
        certificates are the cached ones this object hands out.
        """
        paths = dev_pki_paths(directory, agent_ids)
        write_ca(self.authority, paths.ca_path)
        write_key_pair(self.server_key_pair, paths.server_cert_path, paths.server_key_path)
        for agent_id, (cert_path, key_path) in paths.agents.items():
            write_key_pair(self.agent_key_pair(agent_id), cert_path, key_path)
        return paths


def _load_key_pair(context: ssl.SSLContext, pair: KeyPair) -> None:
    # ssl can only load a certificate chain from files; they live just long enough.
    with tempfile.TemporaryDirectory(prefix="mas-testpki-") as directory:
        cert_path = Path(directory, "cert.pem")
        key_path = Path(directory, "key.pem")
        write_key_pair(pair, cert_path, key_path)
        context.load_cert_chain(cert_path, key_path)
