"""The development PKI and TLS context construction (mas.pki, mas.testing.TestPKI)."""

from __future__ import annotations

import ipaddress
import ssl
import stat
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from mas.errors import CertificateError
from mas.identity import identity_from_certificate
from mas.pki import (
    CertificateAuthority,
    DevPKIPaths,
    KeyPair,
    client_ssl_context,
    dev_pki_paths,
    server_ssl_context,
    write_dev_pki,
    write_key_pair,
)
from mas.testing import TestPKI


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.generate()


@pytest.fixture
def dev_pki(tmp_path: Path) -> DevPKIPaths:
    return write_dev_pki(tmp_path / "pki", ["alice", "bob"])


def load(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def der(pem: bytes) -> bytes:
    return load(pem).public_bytes(serialization.Encoding.DER)


# --- files -------------------------------------------------------------------------------------


def test_dev_pki_writes_every_file_with_the_right_mode(tmp_path: Path) -> None:
    paths = write_dev_pki(tmp_path / "new" / "pki", ["alice", "bob"])
    directory = tmp_path / "new" / "pki"
    assert paths.ca_path == directory / "ca.pem"
    assert paths.server_cert_path == directory / "server.pem"
    assert paths.server_key_path == directory / "server.key"
    assert paths.agents == {
        "alice": (directory / "alice.pem", directory / "alice.key"),
        "bob": (directory / "bob.pem", directory / "bob.key"),
    }
    assert sorted(p.name for p in directory.iterdir()) == [
        "alice.key",
        "alice.pem",
        "bob.key",
        "bob.pem",
        "ca.pem",
        "server.key",
        "server.pem",
    ]
    for cert_path, key_path in [
        (paths.server_cert_path, paths.server_key_path),
        *paths.agents.values(),
    ]:
        assert mode(cert_path) == 0o644
        assert mode(key_path) == 0o600
    assert mode(paths.ca_path) == 0o644


def test_dev_pki_files_parse_and_chain_to_the_ca(dev_pki: DevPKIPaths) -> None:
    root = load(dev_pki.ca_path.read_bytes())
    for cert_path, key_path in [
        (dev_pki.server_cert_path, dev_pki.server_key_path),
        *dev_pki.agents.values(),
    ]:
        cert = load(cert_path.read_bytes())
        cert.verify_directly_issued_by(root)
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        assert key.curve.name == "secp256r1"
        assert key.public_key() == cert.public_key()


def test_rewriting_a_key_narrows_its_mode(tmp_path: Path, ca: CertificateAuthority) -> None:
    key_path = tmp_path / "agent.key"
    key_path.write_bytes(b"old")
    key_path.chmod(0o666)
    write_key_pair(ca.issue_agent("alice"), tmp_path / "agent.pem", key_path)
    assert mode(key_path) == 0o600
    assert key_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")


def test_unwritable_directory_is_a_certificate_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(CertificateError, match="cannot write"):
        write_dev_pki(blocker / "pki", ["alice"])


@pytest.mark.parametrize(
    ("agent_ids", "match"),
    [
        (["server"], "would overwrite"),
        (["CA"], "would overwrite"),
        (["Alice", "alice"], "differ only in case"),
    ],
)
def test_dev_pki_refuses_agent_ids_whose_files_collide(
    tmp_path: Path, agent_ids: list[str], match: str
) -> None:
    with pytest.raises(CertificateError, match=match):
        dev_pki_paths(tmp_path, agent_ids)


def test_dev_pki_refuses_a_malformed_agent_id(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="agent id"):
        write_dev_pki(tmp_path, ["al ice"])
    assert list(tmp_path.iterdir()) == []


def test_dev_pki_accepts_string_paths_and_repeated_ids(tmp_path: Path) -> None:
    paths = write_dev_pki(str(tmp_path), ["alice", "alice"])
    assert list(paths.agents) == ["alice"]
    server_ssl_context(str(paths.ca_path), str(paths.server_cert_path), str(paths.server_key_path))


# --- certificates ------------------------------------------------------------------------------


def test_agent_certificate_has_one_spiffe_uri_and_client_auth(ca: CertificateAuthority) -> None:
    cert = load(ca.issue_agent("alice", "prod.example").cert_pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier("spiffe://prod.example/agent/alice")]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    cert.verify_directly_issued_by(ca.certificate)


def test_server_certificate_names_hosts_and_addresses(ca: CertificateAuthority) -> None:
    cert = load(ca.issue_server(["127.0.0.1", "localhost", "::1", "mas.internal"]).cert_pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "mas.internal"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == []
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_generated_ca_signs_leaves_only(ca: CertificateAuthority) -> None:
    constraints = ca.certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca
    assert constraints.path_length == 0
    usage = ca.certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign
    assert usage.crl_sign


def test_agent_certificate_refuses_a_bad_id(ca: CertificateAuthority) -> None:
    with pytest.raises(ValueError, match="agent id"):
        ca.issue_agent("no/slashes")


@pytest.mark.parametrize("key_type", [trustme.KeyType.ECDSA, trustme.KeyType.RSA])
def test_trustme_ca_signs_agent_certificates(key_type: trustme.KeyType) -> None:
    root = trustme.CA(key_type=key_type)
    ca = CertificateAuthority.from_pem(root.cert_pem.bytes(), root.private_key_pem.bytes())
    pair = ca.issue_agent("alice")
    load(pair.cert_pem).verify_directly_issued_by(load(root.cert_pem.bytes()))
    assert identity_from_certificate(der(pair.cert_pem)).agent_id == "alice"


def test_ca_from_pem_refuses_what_cannot_sign(ca: CertificateAuthority) -> None:
    other = CertificateAuthority.generate()
    leaf = ca.issue_agent("alice")
    with pytest.raises(CertificateError, match="not a PEM"):
        CertificateAuthority.from_pem(b"garbage", ca.key_pem)
    with pytest.raises(CertificateError, match="not a PEM private key"):
        CertificateAuthority.from_pem(ca.cert_pem, b"garbage")
    with pytest.raises(CertificateError, match="not a CA"):
        CertificateAuthority.from_pem(leaf.cert_pem, leaf.key_pem)
    with pytest.raises(CertificateError, match="does not belong"):
        CertificateAuthority.from_pem(ca.cert_pem, other.key_pem)


def test_many_agent_certificates_are_cheap(ca: CertificateAuthority) -> None:
    pairs = [ca.issue_agent(f"agent-{n}") for n in range(200)]
    identities = [identity_from_certificate(der(pair.cert_pem)) for pair in pairs]
    assert [i.agent_id for i in identities] == [f"agent-{n}" for n in range(200)]
    assert len({i.serial_number for i in identities}) == 200


# --- TLS contexts ------------------------------------------------------------------------------


def test_server_context_requires_client_certificates(dev_pki: DevPKIPaths) -> None:
    context = server_ssl_context(dev_pki.ca_path, dev_pki.server_cert_path, dev_pki.server_key_path)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert not context.check_hostname
    assert len(context.get_ca_certs()) == 1


def test_client_context_checks_the_server(dev_pki: DevPKIPaths) -> None:
    cert_path, key_path = dev_pki.agents["alice"]
    context = client_ssl_context(dev_pki.ca_path, cert_path, key_path)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert len(context.get_ca_certs()) == 1


def test_test_pki_contexts_use_the_same_settings() -> None:
    pki = TestPKI()
    server = pki.server_ssl_context()
    assert server.verify_mode == ssl.CERT_REQUIRED
    assert server.minimum_version == ssl.TLSVersion.TLSv1_2
    client = pki.client_ssl_context("alice")
    assert client.check_hostname
    assert client.minimum_version == ssl.TLSVersion.TLSv1_2
    assert pki.agent_key_pair("alice") is pki.agent_key_pair("alice")
    with pytest.raises(ValueError, match="not both"):
        pki.client_ssl_context("alice", key_pair=pki.agent_key_pair("bob"))


def test_test_pki_writes_files_the_production_loader_accepts(tmp_path: Path) -> None:
    pki = TestPKI()
    paths = pki.write(tmp_path, ["alice"])
    server_ssl_context(paths.ca_path, paths.server_cert_path, paths.server_key_path)
    client_ssl_context(paths.ca_path, *paths.agents["alice"])
    assert paths.agents["alice"][0].read_bytes() == pki.agent_key_pair("alice").cert_pem
    assert mode(paths.server_key_path) == 0o600


Loader = tuple[str, int]  # (which context, which argument is broken: 0 CA, 1 cert, 2 key)
LOADERS = [("server", 0), ("server", 1), ("server", 2), ("client", 0), ("client", 1), ("client", 2)]


def build(dev_pki: DevPKIPaths, loader: Loader, broken: Path) -> ssl.SSLContext:
    kind, position = loader
    if kind == "server":
        args = [dev_pki.ca_path, dev_pki.server_cert_path, dev_pki.server_key_path]
        args[position] = broken
        return server_ssl_context(*args)
    args = [dev_pki.ca_path, *dev_pki.agents["alice"]]
    args[position] = broken
    return client_ssl_context(*args)


@pytest.mark.parametrize("loader", LOADERS)
def test_missing_file_is_a_certificate_error(
    dev_pki: DevPKIPaths, tmp_path: Path, loader: Loader
) -> None:
    missing = tmp_path / "nowhere" / "missing.pem"
    with pytest.raises(CertificateError, match="does not exist") as info:
        build(dev_pki, loader, missing)
    assert str(missing) in str(info.value)
    assert isinstance(info.value.__cause__, FileNotFoundError)


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("content", [b"", b"garbage\n", b"-----BEGIN CERTIFICATE-----\nAAAA\n"])
def test_garbage_file_is_a_certificate_error(
    dev_pki: DevPKIPaths, tmp_path: Path, loader: Loader, content: bytes
) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(content)
    with pytest.raises(CertificateError) as info:
        build(dev_pki, loader, garbage)
    assert str(garbage) in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("loader", LOADERS)
def test_directory_is_a_certificate_error(
    dev_pki: DevPKIPaths, tmp_path: Path, loader: Loader
) -> None:
    with pytest.raises(CertificateError, match="is a directory"):
        build(dev_pki, loader, tmp_path)


@pytest.mark.parametrize("kind", ["server", "client"])
def test_mismatched_key_is_a_certificate_error(
    dev_pki: DevPKIPaths, tmp_path: Path, kind: str
) -> None:
    stranger = tmp_path / "stranger.key"
    stranger.write_bytes(CertificateAuthority.generate().issue_agent("bob").key_pem)
    with pytest.raises(CertificateError, match="does not match certificate") as info:
        build(dev_pki, (kind, 2), stranger)
    assert str(stranger) in str(info.value)


def test_encrypted_key_is_a_certificate_error(dev_pki: DevPKIPaths, tmp_path: Path) -> None:
    key = serialization.load_pem_private_key(dev_pki.server_key_path.read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(CertificateError, match="encrypted"):
        build(dev_pki, ("server", 2), encrypted)


def test_key_pair_is_plain_data() -> None:
    pair = KeyPair(cert_pem=b"c", key_pem=b"k")
    with pytest.raises(AttributeError):
        pair.cert_pem = b"x"  # type: ignore[misc]
