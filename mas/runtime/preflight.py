"""What ``mas run``, ``serve`` and ``agent`` would refuse, found before anything starts.

``preflight`` runs every check a start depends on and returns a ``Report`` of
errors and warnings. The runtime, ``mas agent`` and ``mas check`` all call it,
so ``mas check`` says exactly what a start would say::

    no agents listed                          ConfigError (nothing would run)
    dev PKI on a non-loopback listen address  ConfigError
    telemetry on without the otel extra       ConfigError
    server CA, certificate and key            CertificateError (missing, unreadable,
                                              not PEM, key not the certificate's)
    each hosted agent's certificate and key   the same, plus its SPIFFE id must be the agent's
    any certificate expired / not yet valid   CertificateError
    any certificate expiring within 14 days   warning
    each hosted agent's class_path            AgentLoadError (cannot import, not an Agent)
    init_kwargs the constructor does not take AgentLoadError (or a required one missing)

The checks read files and import agent modules, but start nothing.
"""

from __future__ import annotations

import datetime as dt
import functools
import inspect
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

import msgspec
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..agent import Agent
from ..config import AgentSpec, LoadedConfig, MasConfig
from ..errors import AgentLoadError, CertificateError, ConfigError, IdentityError, MasError
from ..identity import identity_from_certificate, spiffe_uri
from ..pki import client_ssl_context, load_certificates, server_ssl_context
from ..telemetry import require_otel
from .hosting import load_agent_class

EXPIRY_WARNING: Final = dt.timedelta(days=14)  # warn this long before a certificate expires

# Keywords the runner passes to every agent's constructor (see AgentHost.make).
INJECTED_KWARGS: Final = ("server_addr", "tls", "runtime_stop", "shutdown_grace")


class Report(msgspec.Struct, kw_only=True):
    """What a preflight found: errors stop a start, warnings are logged."""

    errors: list[MasError] = []
    warnings: list[str] = []

    def raise_errors(self) -> None:
        """Raise the one error found, or all of them in an ``ExceptionGroup``."""
        if len(self.errors) == 1:
            raise self.errors[0]
        if self.errors:
            raise ExceptionGroup("the configuration cannot run", self.errors)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def dev_pki_refusal(config: MasConfig) -> ConfigError | None:
    """Why a development PKI may not be used for this config, or None if it may."""
    if config.tls_configured or is_loopback(config.listen_host):
        return None
    return ConfigError(
        f"server_listen_addr {config.server_listen_addr!r} is not a loopback address, "
        "so a development PKI is not allowed: set tls_ca_path, tls_server_cert_path "
        "and tls_server_key_path (`python -m mas certs` writes a development set)"
    )


def missing_agent_tls(spec: AgentSpec) -> ConfigError:
    """The error for a hosted agent without certificate files when TLS files are configured."""
    return ConfigError(
        f"agent {spec.agent_id!r} has no tls_cert_path/tls_key_path; every agent run by "
        "`mas run` needs its own client certificate when TLS files are configured"
    )


def preflight(
    loaded: LoadedConfig,
    *,
    server: bool,
    agents: Sequence[AgentSpec],
    now: dt.datetime | None = None,
) -> Report:
    """Check what starting ``server`` (if true) and hosting ``agents`` needs.

    ``agents`` are the specs this process would run (those with a ``class_path``
    are checked). ``now`` defaults to the current UTC time.
    """
    config = loaded.config
    report = Report()
    when = now or dt.datetime.now(dt.UTC)
    hosted = [spec for spec in agents if spec.class_path]
    if not config.agents:
        report.errors.append(
            ConfigError(
                f"{loaded.path} lists no agents, so nothing would run and no agent could "
                "connect: add them under `agents:` (see mas.yaml.example, or "
                "`python -m mas init` for a working project)"
            )
        )
    if server:
        _guard(report, functools.partial(_check_server, config, report, when))
    index_of = {spec.agent_id: index for index, spec in enumerate(config.agents)}
    for spec in hosted:
        index = index_of.get(spec.agent_id, 0)
        _guard(report, functools.partial(_check_agent_tls, config, spec, report, when))
        _guard(report, functools.partial(_check_agent_class, loaded, spec, index))
    return report


def _guard(report: Report, check: Callable[[], None]) -> None:
    try:
        check()
    except MasError as exc:
        report.errors.append(exc)


def _check_server(config: MasConfig, report: Report, now: dt.datetime) -> None:
    refusal = dev_pki_refusal(config)
    if refusal is not None:
        raise refusal
    if config.gateway.telemetry.enabled:
        require_otel()
    if not config.tls_configured:
        return
    assert config.tls_ca_path and config.tls_server_cert_path and config.tls_server_key_path
    server_ssl_context(config.tls_ca_path, config.tls_server_cert_path, config.tls_server_key_path)
    _check_validity(Path(config.tls_ca_path), "CA", report, now)
    _check_validity(Path(config.tls_server_cert_path), "server certificate", report, now)


def _check_agent_tls(config: MasConfig, spec: AgentSpec, report: Report, now: dt.datetime) -> None:
    if config.tls_ca_path is None:
        return  # a development PKI makes the agents' certificates
    if not (spec.tls_cert_path and spec.tls_key_path):
        raise missing_agent_tls(spec)
    client_ssl_context(config.tls_ca_path, spec.tls_cert_path, spec.tls_key_path)
    cert_path = Path(spec.tls_cert_path)
    leaf = load_certificates(cert_path)[0]
    expected = spiffe_uri(spec.agent_id, config.trust_domain)
    try:
        identity = identity_from_certificate(
            leaf.public_bytes(serialization.Encoding.DER), config.trust_domain
        )
    except IdentityError as exc:
        raise CertificateError(
            f"certificate {cert_path} of agent {spec.agent_id!r} is not an agent identity "
            f"({exc.detail}); the server would refuse it: issue it for {expected} "
            "(`python -m mas certs` writes a development set)"
        ) from exc
    if identity.agent_id != spec.agent_id:
        raise CertificateError(
            f"certificate {cert_path} of agent {spec.agent_id!r} is for {identity.spiffe_id}, "
            f"so the server would take it for agent {identity.agent_id!r}: issue it for "
            f"{expected} (`python -m mas certs` writes a development set)"
        )
    _check_validity(cert_path, f"certificate of agent {spec.agent_id!r}", report, now)


def _check_validity(path: Path, what: str, report: Report, now: dt.datetime) -> None:
    cert: x509.Certificate = load_certificates(path)[0]
    if cert.not_valid_before_utc > now:
        raise CertificateError(
            f"{what} {path} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC; "
            "check this machine's clock or issue a new one"
        )
    if cert.not_valid_after_utc <= now:
        raise CertificateError(
            f"{what} {path} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; "
            "issue a new one (`python -m mas certs --force` for development)"
        )
    if cert.not_valid_after_utc - now < EXPIRY_WARNING:
        days = (cert.not_valid_after_utc - now).total_seconds() / 86400
        report.warnings.append(
            f"{what} {path} expires in {days:.1f} days "
            f"({cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC); renew it soon"
        )


def _check_agent_class(loaded: LoadedConfig, spec: AgentSpec, index: int) -> None:
    cls = load_agent_class(spec, loaded.base_dir, index)
    problem = init_kwargs_problem(cls, spec)
    if problem is not None:
        raise AgentLoadError(f"$.agents[{index}].init_kwargs: {problem}")


def init_kwargs_problem(cls: type[Agent[Any]], spec: AgentSpec) -> str | None:
    """Why ``cls`` would refuse ``spec.init_kwargs`` (with the runner's keywords), or None.

    Follows ``__init__`` up the class hierarchy while each one passes ``**kwargs``
    on, ending at ``Agent``, whose own ``**`` refuses what it does not know.
    """
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    accepted: set[str] = set()
    required: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            parameters = list(inspect.signature(init).parameters.values())
        except (TypeError, ValueError):
            return None  # a signature we cannot read: let the constructor decide
        # parameters[0] is self, parameters[1] the agent id (passed positionally).
        keywords = [p for p in parameters[2:] if p.kind in named]
        accepted.update(p.name for p in keywords)
        required.update(p.name for p in keywords if p.default is inspect.Parameter.empty)
        passes_on = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)
        if klass is Agent or not passes_on:
            break
    given = set(spec.init_kwargs)
    unknown = sorted(given - accepted)
    if unknown:
        return (
            f"{spec.class_path} does not take {', '.join(map(repr, unknown))} (agent "
            f"{spec.agent_id!r}); remove them, or add them to its __init__ (which must pass "
            "**kwargs on to super().__init__)"
        )
    absent = sorted(required - given - set(INJECTED_KWARGS))
    if absent:
        return (
            f"{spec.class_path} needs {', '.join(map(repr, absent))} (agent "
            f"{spec.agent_id!r}), which init_kwargs does not give; add them to its init_kwargs"
        )
    missing = sorted(set(INJECTED_KWARGS) - accepted)
    if missing:
        return (
            f"{spec.class_path}.__init__ does not accept the runner's keyword(s) "
            f"{', '.join(map(repr, missing))} (agent {spec.agent_id!r}); "
            "give it **kwargs and pass them on to super().__init__"
        )
    return None
