"""SPIFFE agent identities and how to read one from a peer certificate (pure).

An agent is known by the one URI in its client certificate's subjectAltName::

    spiffe://<trust_domain>/agent/<agent_id>

``identity_from_certificate`` turns the DER bytes of a verified peer
certificate into a ``PeerIdentity``, or raises ``IdentityError`` with a stable
``reason`` token and a one-sentence ``detail``. The reason is what a client sees
in its ``UNAUTHENTICATED`` status, spelt as the seed's system (mas-framework 0.4)
spells it where that system has the same refusal (``REASONS``); the detail says
exactly what is wrong, for the log. It checks only the identity:
the chain, validity dates and key usage are the TLS handshake's job, and the
allowlist is the gateway's.

Error handling
    Every refusal is an ``IdentityError``; nothing from ``cryptography``
    escapes. Values taken from the certificate are shown with ``ascii()`` and
    cut short, so a hostile certificate cannot forge or flood a log line.
"""

from __future__ import annotations

import re
from typing import Final

import msgspec
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from .errors import IdentityError, Reason

AGENT_ID_RE: Final[re.Pattern[str]] = re.compile(r"\A[A-Za-z0-9_-]{1,64}\Z")
"""An agent id: 1 to 64 ASCII letters, digits, ``_`` or ``-`` (safe in URIs and file names)."""

TRUST_DOMAIN_RE: Final[re.Pattern[str]] = re.compile(r"\A[a-z0-9._-]{1,255}\Z")
"""A SPIFFE trust domain: lowercase letters, digits, ``.``, ``_`` and ``-``."""

DEFAULT_TRUST_DOMAIN: Final = "mas"

SPIFFE_SCHEME: Final = "spiffe://"
AGENT_PATH_SEGMENT: Final = "agent"

MISSING_SPIFFE_SAN: Final = Reason.MISSING_SPIFFE_SAN  # the certificate has no subjectAltName
INVALID_SPIFFE_SAN: Final = Reason.INVALID_SPIFFE_SAN  # not exactly one URI, or not a spiffe:// one
INVALID_SPIFFE_FORMAT: Final = (
    Reason.INVALID_SPIFFE_FORMAT
)  # not spiffe://<trust_domain>/agent/<id>
CA_CERTIFICATE: Final = Reason.CA_CERTIFICATE  # a CA certificate used as a leaf (mas only)
UNPARSABLE_CERTIFICATE: Final = Reason.UNPARSABLE_CERTIFICATE  # not DER X.509 (mas only)
REASONS: Final = frozenset(
    {
        MISSING_SPIFFE_SAN,
        INVALID_SPIFFE_SAN,
        INVALID_SPIFFE_FORMAT,
        CA_CERTIFICATE,
        UNPARSABLE_CERTIFICATE,
    }
)
"""Every ``IdentityError.reason``; the first three are the seed system's own tokens."""

_SHOW_LIMIT: Final = 80  # characters of an untrusted value quoted in an error detail


class PeerIdentity(msgspec.Struct, frozen=True, kw_only=True):
    """Who is on the other end of a verified mTLS connection.

    ``serial_number`` and ``fingerprint_sha256`` (lowercase hex of the SHA-256
    of the DER certificate, no colons) identify the exact certificate, for
    audit records and revocation lists.
    """

    agent_id: str
    spiffe_id: str
    serial_number: int
    fingerprint_sha256: str


def is_valid_agent_id(value: str) -> bool:
    """Return whether ``value`` is a well-formed agent id (see ``AGENT_ID_RE``)."""
    return AGENT_ID_RE.match(value) is not None


def is_valid_trust_domain(value: str) -> bool:
    """Return whether ``value`` is a well-formed SPIFFE trust domain name."""
    return TRUST_DOMAIN_RE.match(value) is not None


def spiffe_uri(agent_id: str, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> str:
    """Return ``spiffe://<trust_domain>/agent/<agent_id>``.

    Raises ``ValueError`` when the agent id or the trust domain is malformed.
    """
    if not is_valid_agent_id(agent_id):
        raise ValueError(
            f"agent id {_show(agent_id)} is invalid: expected 1 to 64 letters, digits, '_' or '-'"
        )
    if not is_valid_trust_domain(trust_domain):
        raise ValueError(
            f"trust domain {_show(trust_domain)} is invalid: "
            "expected lowercase letters, digits, '.', '_' or '-'"
        )
    return f"{SPIFFE_SCHEME}{trust_domain}/{AGENT_PATH_SEGMENT}/{agent_id}"


def agent_id_from_spiffe_id(uri: str, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> str:
    """Return the agent id named by a SPIFFE URI in ``trust_domain``.

    The URI must be exactly ``spiffe://<trust_domain>/agent/<id>``: no port,
    user info, query, fragment, empty or extra path segments. Raises
    ``IdentityError``: ``invalid_spiffe_san`` when it is not a ``spiffe://`` URI
    at all, ``invalid_spiffe_format`` when it is one but malformed, in another
    trust domain, or naming an invalid agent id (the detail says which).
    """
    expected = f"expected {SPIFFE_SCHEME}{trust_domain}/{AGENT_PATH_SEGMENT}/<agent_id>"
    if not uri.startswith(SPIFFE_SCHEME):
        # The seed's system looks only at spiffe:// URIs: another one counts as none.
        raise IdentityError(
            INVALID_SPIFFE_SAN, f"URI {_show(uri)} is not a SPIFFE id (spiffe://), {expected}."
        )
    rest = uri[len(SPIFFE_SCHEME) :]
    if "?" in rest or "#" in rest:
        raise _malformed(uri, "has a query or fragment", expected)
    authority, has_path, path = rest.partition("/")
    if not authority:
        raise _malformed(uri, "has an empty trust domain", expected)
    if "@" in authority:
        raise _malformed(uri, "has user info", expected)
    if ":" in authority:
        raise _malformed(uri, "has a port", expected)
    if not is_valid_trust_domain(authority):
        raise _malformed(uri, "has a trust domain with characters SPIFFE does not allow", expected)
    segments = path.split("/")
    if not has_path or len(segments) != 2 or segments[0] != AGENT_PATH_SEGMENT or not segments[1]:
        raise _malformed(uri, "does not have the path /agent/<agent_id>", expected)
    if authority != trust_domain:
        raise IdentityError(
            INVALID_SPIFFE_FORMAT,
            f"SPIFFE id {_show(uri)} is in trust domain {_show(authority)}, "
            f"expected trust domain {_show(trust_domain)}.",
        )
    agent_id = segments[1]
    if not is_valid_agent_id(agent_id):
        raise IdentityError(
            INVALID_SPIFFE_FORMAT,
            f"SPIFFE id {_show(uri)} names agent id {_show(agent_id)}, "
            "expected 1 to 64 letters, digits, '_' or '-'.",
        )
    return agent_id


def identity_from_certificate(der: bytes, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> PeerIdentity:
    """Read the agent identity from a peer certificate in DER form.

    Pass the bytes from ``ssl_object.getpeercert(binary_form=True)`` after a
    verified handshake. Raises ``IdentityError`` (reasons:
    ``unparsable_certificate``, ``ca_certificate``, ``missing_spiffe_san`` (no
    subjectAltName), ``invalid_spiffe_san`` (no URI, several URIs, or one that is
    not ``spiffe://``), ``invalid_spiffe_format`` (a malformed SPIFFE id, another
    trust domain, an invalid agent id)).
    """
    try:
        cert = x509.load_der_x509_certificate(der)
        extensions = cert.extensions
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
        raise IdentityError(
            UNPARSABLE_CERTIFICATE,
            f"the peer certificate could not be parsed ({_show(str(exc))}), "
            "expected a DER-encoded X.509 certificate.",
        ) from exc

    try:
        constraints = extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is not None and constraints.ca:
        raise IdentityError(
            CA_CERTIFICATE,
            "the peer certificate is a CA certificate (basicConstraints CA=true), "
            "expected an agent leaf certificate.",
        )

    try:
        san = extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise IdentityError(
            MISSING_SPIFFE_SAN,
            "the peer certificate has no subjectAltName extension, "
            f"expected one URI {SPIFFE_SCHEME}{trust_domain}/{AGENT_PATH_SEGMENT}/<agent_id>.",
        ) from None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if not uris:
        raise IdentityError(
            INVALID_SPIFFE_SAN,
            "the peer certificate's subjectAltName has no URI, "
            f"expected one URI {SPIFFE_SCHEME}{trust_domain}/{AGENT_PATH_SEGMENT}/<agent_id>.",
        )
    if len(uris) > 1:
        shown = ", ".join(_show(uri) for uri in uris[:3])
        raise IdentityError(
            INVALID_SPIFFE_SAN,
            f"the peer certificate's subjectAltName has {len(uris)} URIs ({shown}), "
            "expected exactly one SPIFFE id.",
        )

    spiffe_id = uris[0]
    agent_id = agent_id_from_spiffe_id(spiffe_id, trust_domain)
    return PeerIdentity(
        agent_id=agent_id,
        spiffe_id=spiffe_id,
        serial_number=cert.serial_number,
        fingerprint_sha256=cert.fingerprint(hashes.SHA256()).hex(),
    )


def _malformed(uri: str, problem: str, expected: str) -> IdentityError:
    return IdentityError(INVALID_SPIFFE_FORMAT, f"SPIFFE id {_show(uri)} {problem}, {expected}.")


def _show(value: str) -> str:
    """Quote an untrusted value for a log line: ASCII only, at most ``_SHOW_LIMIT`` chars."""
    if len(value) > _SHOW_LIMIT:
        return ascii(value[:_SHOW_LIMIT]) + "..."
    return ascii(value)
