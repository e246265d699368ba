"""Development PKI and the TLS contexts the server and agents use.

``CertificateAuthority`` makes throwaway CAs and signs server and agent
certificates with EC P-256 keys (thousands per second); ``write_dev_pki``
writes a complete set of files for ``mas.yaml``. ``server_ssl_context`` and
``client_ssl_context`` build the mTLS contexts: TLS 1.2 or newer, a client
certificate always required, ALPN ``h2``.

Error handling
    Every problem with a certificate or key file (missing, unreadable, not
    PEM, encrypted, not matching its certificate) is raised as
    ``CertificateError`` with one sentence naming the file and the fix; the
    ``OSError``, ``ssl.SSLError`` or ``ValueError`` behind it is chained.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final, TypeAlias

import msgspec
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .errors import CertificateError
from .identity import DEFAULT_TRUST_DOMAIN, spiffe_uri

SigningKey: TypeAlias = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
StrPath: TypeAlias = str | os.PathLike[str]

CA_VALIDITY: Final = dt.timedelta(days=365)  # a development CA is thrown away long before
LEAF_VALIDITY: Final = dt.timedelta(days=365)  # capped at the issuing CA's own expiry
CLOCK_SKEW: Final = dt.timedelta(minutes=5)  # backdating, so a slow peer clock still accepts
DEFAULT_SERVER_HOSTS: Final = ("127.0.0.1", "localhost", "::1")
ALPN_PROTOCOLS: Final = ("h2",)  # gRPC runs over HTTP/2 only

_CERTS_HINT: Final = "fix the path in mas.yaml or run `python -m mas certs` for development."


class KeyPair(msgspec.Struct, frozen=True, kw_only=True):
    """A PEM certificate (or chain, leaf first) and its unencrypted PKCS#8 PEM key."""

    cert_pem: bytes
    key_pem: bytes


class DevPKIPaths(msgspec.Struct, frozen=True, kw_only=True):
    """Where a development PKI's files are; ``agents`` maps agent id to (cert, key)."""

    ca_path: Path
    server_cert_path: Path
    server_key_path: Path
    agents: dict[str, tuple[Path, Path]]


class CertificateAuthority:
    """A CA certificate and its private key, able to sign leaf certificates."""

    def __init__(self, certificate: x509.Certificate, private_key: SigningKey) -> None:
        self._cert = certificate
        self._key = private_key

    @classmethod
    def generate(cls, common_name: str = "mas development CA") -> CertificateAuthority:
        """Make a new self-signed EC P-256 CA, valid for a year, that signs leaves only."""
        key = ec.generate_private_key(ec.SECP256R1())
        name = _name(common_name)
        cert = (
            _builder(name, None, key.public_key(), CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(sign=False, ca=True), critical=True)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    def from_pem(cls, cert_pem: bytes, key_pem: bytes) -> CertificateAuthority:
        """Load a CA from PEM (for example a trustme CA's ``cert_pem`` and ``private_key_pem``).

        The key may be EC or RSA and must be unencrypted. Raises
        ``CertificateError`` when either does not parse, the certificate is
        not a CA, or the key does not belong to it.
        """
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
        except ValueError as exc:
            raise CertificateError(
                "the CA certificate is not a PEM X.509 certificate; pass the CA's cert_pem."
            ) from exc
        key = _parse_key(key_pem, "the CA private key")
        try:
            is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            is_ca = False
        if not is_ca:
            raise CertificateError("the CA certificate is not a CA (basicConstraints CA is false).")
        if cert.public_key() != key.public_key():
            raise CertificateError("the CA private key does not belong to the CA certificate.")
        return cls(cert, key)

    @property
    def certificate(self) -> x509.Certificate:
        """The CA certificate."""
        return self._cert

    @property
    def cert_pem(self) -> bytes:
        """The CA certificate in PEM, for trust stores (``tls_ca_path``)."""
        return self._cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        """The CA private key in unencrypted PKCS#8 PEM; keep it out of any deployment."""
        return _key_pem(self._key)

    def issue_leaf(
        self,
        *,
        common_name: str,
        uris: Sequence[str] = (),
        dns: Sequence[str] = (),
        ips: Sequence[str] = (),
        is_ca: bool = False,
        client: bool = True,
        server: bool = False,
    ) -> KeyPair:
        """Sign a certificate for a new EC P-256 key, exactly as described.

        No check is made that the result is a sensible identity, so tests can
        build deliberately bad certificates (no SAN, two URIs, a CA as a leaf).
        Without any of ``uris``, ``dns`` and ``ips`` the certificate has no
        subjectAltName extension; with neither ``client`` nor ``server`` it has
        no extendedKeyUsage extension.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            _builder(_name(common_name), self._cert, key.public_key(), LEAF_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
            .add_extension(_key_usage(sign=True, ca=is_ca), critical=True)
            .add_extension(self._authority_key_identifier(), critical=False)
        )
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri) for uri in uris]
        names += [x509.DNSName(name) for name in dns]
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
        if server:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        if usages:
            builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        return KeyPair(
            cert_pem=cert.public_bytes(serialization.Encoding.PEM), key_pem=_key_pem(key)
        )

    def issue_server(self, hosts: Sequence[str] = DEFAULT_SERVER_HOSTS) -> KeyPair:
        """Sign a server certificate (serverAuth) for host names and IP addresses."""
        if not hosts:
            raise ValueError("a server certificate needs at least one host name or IP address")
        ips = [host for host in hosts if _is_ip(host)]
        dns = [host for host in hosts if not _is_ip(host)]
        return self.issue_leaf(common_name=hosts[0], dns=dns, ips=ips, client=False, server=True)

    def issue_agent(self, agent_id: str, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> KeyPair:
        """Sign an agent certificate (clientAuth) whose only URI SAN is its SPIFFE id.

        Raises ``ValueError`` for an agent id or trust domain that cannot be a SPIFFE id.
        """
        uri = spiffe_uri(agent_id, trust_domain)
        return self.issue_leaf(common_name=agent_id, uris=[uri])

    def _authority_key_identifier(self) -> x509.AuthorityKeyIdentifier:
        try:
            ski = self._cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        except x509.ExtensionNotFound:
            return x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key())
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def write_key_pair(pair: KeyPair, cert_path: StrPath, key_path: StrPath) -> None:
    """Write a certificate (mode 0o644) and its key (mode 0o600), creating parent directories."""
    _write_file(cert_path, pair.cert_pem, 0o644)
    _write_file(key_path, pair.key_pem, 0o600)


def write_ca(ca: CertificateAuthority, path: StrPath, *, key_path: StrPath | None = None) -> None:
    """Write the CA certificate (mode 0o644) and, only if ``key_path`` is given, its key."""
    _write_file(path, ca.cert_pem, 0o644)
    if key_path is not None:
        _write_file(key_path, ca.key_pem, 0o600)


def dev_pki_paths(directory: StrPath, agent_ids: Iterable[str]) -> DevPKIPaths:
    """Name the files of a development PKI in ``directory`` (nothing is written).

    ``ca.pem``, ``server.pem``, ``server.key``, and ``<agent_id>.pem`` /
    ``<agent_id>.key`` per agent. Raises ``ValueError`` for a malformed agent
    id, and ``CertificateError`` for an id whose files would be the CA's or the
    server's (``ca``, ``server``) or two ids that differ only in case (they
    would share files on a case-insensitive file system).
    """
    directory = Path(directory)
    agents: dict[str, tuple[Path, Path]] = {}
    seen: dict[str, str] = {}
    for agent_id in agent_ids:
        spiffe_uri(agent_id)  # validates the id
        folded = agent_id.casefold()
        if folded in {"ca", "server"}:
            raise CertificateError(
                f"agent id {agent_id!r} would overwrite the {folded} files of the development "
                f"PKI in {directory}; rename the agent."
            )
        other = seen.setdefault(folded, agent_id)
        if other != agent_id:
            raise CertificateError(
                f"agent ids {other!r} and {agent_id!r} differ only in case and would share "
                f"certificate files in {directory}; rename one of them."
            )
        agents[agent_id] = (directory / f"{agent_id}.pem", directory / f"{agent_id}.key")
    return DevPKIPaths(
        ca_path=directory / "ca.pem",
        server_cert_path=directory / "server.pem",
        server_key_path=directory / "server.key",
        agents=agents,
    )


def write_dev_pki(
    directory: StrPath,
    agent_ids: Iterable[str],
    *,
    trust_domain: str = DEFAULT_TRUST_DOMAIN,
    server_hosts: Sequence[str] = DEFAULT_SERVER_HOSTS,
) -> DevPKIPaths:
    """Make a new CA, a server certificate and one certificate per agent, and write them.

    The CA key is not written: to add an agent later, make a new PKI. Raises
    as ``dev_pki_paths`` does, and ``CertificateError`` when a file cannot be
    written.
    """
    paths = dev_pki_paths(directory, agent_ids)
    ca = CertificateAuthority.generate()
    write_ca(ca, paths.ca_path)
    write_key_pair(ca.issue_server(server_hosts), paths.server_cert_path, paths.server_key_path)
    for agent_id, (cert_path, key_path) in paths.agents.items():
        write_key_pair(ca.issue_agent(agent_id, trust_domain), cert_path, key_path)
    return paths


def base_server_context() -> ssl.SSLContext:
    """A server context with mas's settings (client certificate required, TLS 1.2+, ALPN h2).

    No CA or certificate is loaded yet; ``server_ssl_context`` does both.
    System CAs are never trusted for client certificates.
    """
    return _with_settings(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))


def base_client_context() -> ssl.SSLContext:
    """A client context with mas's settings (host name checked, TLS 1.2+, ALPN h2).

    No CA or client certificate is loaded yet; ``client_ssl_context`` does both.
    """
    context = _with_settings(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    context.check_hostname = True
    return context


def _with_settings(context: ssl.SSLContext) -> ssl.SSLContext:
    context.verify_mode = ssl.CERT_REQUIRED
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # TLS 1.2 renegotiation lets a client make the server redo handshakes on demand.
    context.options |= ssl.OP_NO_RENEGOTIATION
    context.set_alpn_protocols(list(ALPN_PROTOCOLS))
    return context


def server_ssl_context(ca_path: StrPath, cert_path: StrPath, key_path: StrPath) -> ssl.SSLContext:
    """The server's mTLS context: trusts only ``ca_path`` for clients, serves the given pair.

    Raises ``CertificateError`` naming the file at fault.
    """
    return _load(base_server_context(), ca_path, cert_path, key_path)


def client_ssl_context(ca_path: StrPath, cert_path: StrPath, key_path: StrPath) -> ssl.SSLContext:
    """An agent's mTLS context: trusts only ``ca_path`` for the server, presents the given pair.

    Raises ``CertificateError`` naming the file at fault.
    """
    return _load(base_client_context(), ca_path, cert_path, key_path)


def load_certificates(path: StrPath, what: str = "certificate") -> list[x509.Certificate]:
    """Read every certificate in a PEM file; raises ``CertificateError`` if there is none.

    ``what`` names the file's role in the error message ("CA", "certificate").
    """
    path = Path(path)
    data = _read_file(path, what)
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise CertificateError(
            f"{what} file {path} holds no PEM certificate "
            f"('-----BEGIN CERTIFICATE-----'); {_CERTS_HINT}"
        ) from exc


def _load(
    context: ssl.SSLContext, ca_path: StrPath, cert_path: StrPath, key_path: StrPath
) -> ssl.SSLContext:
    ca_path, cert_path, key_path = Path(ca_path), Path(cert_path), Path(key_path)
    load_certificates(ca_path, "CA")
    try:
        context.load_verify_locations(cafile=os.fspath(ca_path))
    except (ssl.SSLError, OSError) as exc:
        message = f"CA file {ca_path} cannot be used as a trust store ({exc}); {_CERTS_HINT}"
        raise CertificateError(message) from exc
    leaf = load_certificates(cert_path)[0]
    key = _parse_key(_read_file(key_path, "key"), f"key file {key_path}")
    if leaf.public_key() != key.public_key():
        raise CertificateError(
            f"key file {key_path} does not match certificate {cert_path}; "
            "use the key that was generated with that certificate."
        )
    try:
        context.load_cert_chain(os.fspath(cert_path), os.fspath(key_path))
    except (ssl.SSLError, OSError) as exc:
        raise CertificateError(
            f"certificate {cert_path} with key {key_path} cannot be used for TLS ({exc}); "
            f"{_CERTS_HINT}"
        ) from exc
    return context


def _read_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        problem, fix = f"cannot be read ({exc.strerror})", _CERTS_HINT
        if isinstance(exc, FileNotFoundError):
            problem = "does not exist"
        elif isinstance(exc, IsADirectoryError):
            problem = "is a directory"
        elif isinstance(exc, PermissionError):
            fix = "fix its owner or mode."
        raise CertificateError(f"{what} file {path} {problem}; {fix}") from exc


def _write_file(target: StrPath, data: bytes, mode: int) -> None:
    path = Path(target)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), mode)  # the file may have existed with a wider mode
            file.write(data)
    except OSError as exc:
        raise CertificateError(
            f"cannot write {path} ({exc.strerror}); check the directory."
        ) from exc


def _parse_key(data: bytes, what: str) -> SigningKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError as exc:  # cryptography's signal for "encrypted, and no password given"
        raise CertificateError(f"{what} is encrypted; mas needs an unencrypted key.") from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CertificateError(f"{what} is not a PEM private key; {_CERTS_HINT}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise CertificateError(f"{what} is a {type(key).__name__}; mas needs an EC or RSA key.")
    return key


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(
    subject: x509.Name,
    issuer: x509.Certificate | None,  # None: self-signed
    public_key: ec.EllipticCurvePublicKey,
    validity: dt.timedelta,
) -> x509.CertificateBuilder:
    """Start a certificate valid from now (minus skew), never beyond its issuer's expiry."""
    now = dt.datetime.now(dt.UTC)
    not_after = now + validity
    if issuer is not None:
        not_after = min(not_after, issuer.not_valid_after_utc)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject if issuer is None else issuer.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _key_pem(key: SigningKey) -> bytes:
    encoding, pkcs8 = serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8
    return key.private_bytes(encoding, pkcs8, serialization.NoEncryption())


def _key_usage(*, sign: bool, ca: bool) -> x509.KeyUsage:
    unused = ("content_commitment", "key_encipherment", "data_encipherment", "key_agreement")
    return x509.KeyUsage(
        digital_signature=sign,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
        **dict.fromkeys(unused, False),
    )


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
