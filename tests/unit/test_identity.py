"""Reading SPIFFE agent identities from certificates (mas.identity)."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from hypothesis import given
from hypothesis import strategies as st

from mas.errors import IdentityError
from mas.identity import (
    AGENT_ID_RE,
    DEFAULT_TRUST_DOMAIN,
    PeerIdentity,
    agent_id_from_spiffe_id,
    identity_from_certificate,
    is_valid_agent_id,
    spiffe_uri,
)
from mas.pki import CertificateAuthority, KeyPair


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.generate()


def der_of(pair: KeyPair) -> bytes:
    cert = x509.load_pem_x509_certificate(pair.cert_pem)
    return cert.public_bytes(serialization.Encoding.DER)


def refusal(der: bytes, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> IdentityError:
    with pytest.raises(IdentityError) as info:
        identity_from_certificate(der, trust_domain)
    detail = info.value.detail
    assert detail.endswith(".")
    assert "\n" not in detail
    return info.value


def test_agent_certificate_gives_its_identity(ca: CertificateAuthority) -> None:
    pair = ca.issue_agent("alice")
    cert = x509.load_pem_x509_certificate(pair.cert_pem)
    identity = identity_from_certificate(der_of(pair))
    assert identity == PeerIdentity(
        agent_id="alice",
        spiffe_id="spiffe://mas/agent/alice",
        serial_number=cert.serial_number,
        fingerprint_sha256=cert.fingerprint(hashes.SHA256()).hex(),
    )
    assert len(identity.fingerprint_sha256) == 64
    assert identity.fingerprint_sha256 == identity.fingerprint_sha256.lower()


def test_agent_certificate_in_custom_trust_domain(ca: CertificateAuthority) -> None:
    der = der_of(ca.issue_agent("bob_2-x", "prod.example"))
    identity = identity_from_certificate(der, "prod.example")
    assert identity.agent_id == "bob_2-x"
    assert identity.spiffe_id == "spiffe://prod.example/agent/bob_2-x"


def test_certificate_without_san_is_refused(ca: CertificateAuthority) -> None:
    error = refusal(der_of(ca.issue_leaf(common_name="alice")))
    assert error.reason == "missing_spiffe_san"  # the seed system's token


def test_san_with_only_dns_names_is_refused(ca: CertificateAuthority) -> None:
    der = der_of(ca.issue_leaf(common_name="alice", dns=["alice.example"], ips=["127.0.0.1"]))
    assert refusal(der).reason == "invalid_spiffe_san"


def test_two_uri_sans_are_refused(ca: CertificateAuthority) -> None:
    uris = ["spiffe://mas/agent/alice", "spiffe://mas/agent/admin"]
    error = refusal(der_of(ca.issue_leaf(common_name="alice", uris=uris)))
    assert error.reason == "invalid_spiffe_san"
    assert "admin" in error.detail


def test_wrong_trust_domain_is_refused(ca: CertificateAuthority) -> None:
    error = refusal(der_of(ca.issue_agent("alice", "other")))
    assert error.reason == "invalid_spiffe_format"
    assert "'other'" in error.detail
    assert "'mas'" in error.detail


@pytest.mark.parametrize(
    "uri",
    [
        "spiffe://mas/agents/x",
        "spiffe://mas/agent/",
        "spiffe://mas/agent/a/b",
        "spiffe://mas/agent",
        "spiffe://mas",
        "spiffe://mas/",
        "spiffe:///agent/a",
        "spiffe://mas//agent/a",
        "spiffe://mas/agent/a?admin=1",
        "spiffe://mas/agent/a#frag",
        "spiffe://mas:8443/agent/a",
        "spiffe://root@mas/agent/a",
        "spiffe://MAS/agent/a",
    ],
)
def test_malformed_spiffe_id_is_refused(ca: CertificateAuthority, uri: str) -> None:
    error = refusal(der_of(ca.issue_leaf(common_name="x", uris=[uri])))
    assert error.reason == "invalid_spiffe_format"
    assert "expected spiffe://mas/agent/<agent_id>" in error.detail


@pytest.mark.parametrize("uri", ["https://mas/agent/a", "SPIFFE://mas/agent/a", "urn:x"])
def test_uri_that_is_not_spiffe_counts_as_no_spiffe_san(ca: CertificateAuthority, uri: str) -> None:
    error = refusal(der_of(ca.issue_leaf(common_name="x", uris=[uri])))
    assert error.reason == "invalid_spiffe_san"  # as the seed's system: not a SPIFFE id at all
    assert "expected spiffe://mas/agent/<agent_id>" in error.detail


@pytest.mark.parametrize("agent_id", ["a" * 65, "a.b", "a%20b", "al ice", "al+ice", "a*"])
def test_invalid_agent_id_is_refused(ca: CertificateAuthority, agent_id: str) -> None:
    uri = f"spiffe://mas/agent/{agent_id}"
    error = refusal(der_of(ca.issue_leaf(common_name="x", uris=[uri])))
    assert error.reason == "invalid_spiffe_format"


def test_ca_certificate_as_leaf_is_refused(ca: CertificateAuthority) -> None:
    der = der_of(ca.issue_leaf(common_name="alice", uris=["spiffe://mas/agent/alice"], is_ca=True))
    assert refusal(der).reason == "ca_certificate"


def test_root_ca_certificate_is_refused(ca: CertificateAuthority) -> None:
    der = ca.certificate.public_bytes(serialization.Encoding.DER)
    assert refusal(der).reason == "ca_certificate"


@pytest.mark.parametrize("der", [b"", b"garbage", b"\x30\x03\x02\x01\x01", b"\x00" * 500])
def test_garbage_bytes_are_refused(der: bytes) -> None:
    assert refusal(der).reason == "unparsable_certificate"


def test_pem_instead_of_der_is_refused(ca: CertificateAuthority) -> None:
    assert refusal(ca.issue_agent("alice").cert_pem).reason == "unparsable_certificate"


def test_long_hostile_values_are_cut_short_in_the_detail(ca: CertificateAuthority) -> None:
    uri = "spiffe://mas/agent/" + "x" * 5000 + "\r\nforged: line"
    error = refusal(der_of(ca.issue_leaf(common_name="x", uris=[uri])))
    assert error.reason == "invalid_spiffe_format"
    assert len(error.detail) < 400
    assert "\r" not in error.detail


@pytest.mark.parametrize("good", ["a", "A-z_09", "x" * 64])
def test_valid_agent_ids(good: str) -> None:
    assert is_valid_agent_id(good)
    assert AGENT_ID_RE.match(good)


@pytest.mark.parametrize("bad", ["", "x" * 65, "a b", "a/b", "abc\n", "é", "a.b"])
def test_invalid_agent_ids(bad: str) -> None:
    assert not is_valid_agent_id(bad)
    with pytest.raises(ValueError, match="agent id"):
        spiffe_uri(bad)


def test_spiffe_uri_format() -> None:
    assert spiffe_uri("alice") == "spiffe://mas/agent/alice"
    assert spiffe_uri("alice", "example.org") == "spiffe://example.org/agent/alice"
    with pytest.raises(ValueError, match="trust domain"):
        spiffe_uri("alice", "Bad Domain")


_URIS = st.one_of(
    st.text(alphabet="spife:/agentmAS?#@._-%1 x", max_size=40),
    st.from_regex(
        r"spiffe://[a-zA-Z.:@]{0,4}/(agent|agents)?/[A-Za-z0-9_%./?#-]{0,66}", fullmatch=True
    ),
    st.from_regex(AGENT_ID_RE).map(spiffe_uri),
)


@given(_URIS)
def test_any_uri_is_parsed_exactly_or_refused(uri: str) -> None:
    try:
        agent_id = agent_id_from_spiffe_id(uri)
    except IdentityError as exc:
        assert exc.reason in {"invalid_spiffe_san", "invalid_spiffe_format"}
    else:
        assert spiffe_uri(agent_id) == uri


@given(st.binary(max_size=300))
def test_any_bytes_give_an_identity_error_or_nothing(der: bytes) -> None:
    try:
        identity_from_certificate(der)
    except IdentityError as exc:
        assert exc.reason == "unparsable_certificate"
