"""The ``gateway:`` section: Redis, rate limits, features, DLP, audit, telemetry, breaker."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Final, Literal

import msgspec
import re2

from ._base import _REDIS_SCHEMES, Action, Name, NonNegInt, PosFloat, PosInt, _Base, redact_url

# --- gateway (validated now, enforced by the gateway) -----------------------------------


class RedisConfig(_Base, frozen=True):
    """Redis connection used by the gateway's shared state."""

    url: str = "redis://localhost:6379"
    decode_responses: bool = True
    socket_timeout: PosFloat | None = None  # seconds; None = no timeout

    def __post_init__(self) -> None:
        if not self.url.startswith(_REDIS_SCHEMES):
            raise ValueError(
                f"url must start with redis://, rediss:// or unix://: {redact_url(self.url)!r}"
            )


class RateLimitConfig(_Base, frozen=True):
    """Messages each agent may send."""

    per_minute: PosInt = 100
    per_hour: PosInt = 1000


class RateLimitOverride(_Base, frozen=True):
    """One agent's own limits; a value left out keeps the gateway's."""

    per_minute: PosInt | None = None
    per_hour: PosInt | None = None


class FeaturesConfig(_Base, frozen=True):
    """Gateway features switched on or off."""

    dlp: bool = True
    rbac: bool = False
    circuit_breaker: bool = True


def compile_pattern(pattern: str, *, case_insensitive: bool = False) -> Any:
    """``pattern`` compiled by RE2 (linear-time matching); ``ValueError`` saying why not.

    RE2 has no backreferences (``\\1``), no lookaround (``(?=``, ``(?!``, ``(?<=``,
    ``(?<!``), no possessive or atomic repetition, and repetition counts up to 1000; the
    rest of Python's ``re`` syntax is accepted. Returns a ``re2`` pattern object.
    """
    options = re2.Options()
    options.log_errors = False  # the reason goes into the error, not to stderr
    options.case_sensitive = not case_insensitive
    try:
        return re2.compile(pattern, options)
    except (re2.error, TypeError) as exc:
        reason = exc.args[0] if exc.args else exc
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise ValueError(
            f"pattern {pattern!r} is not supported by the linear-time engine (RE2): {reason};"
            " write it without backreferences, lookaround or possessive repetition"
        ) from None


def compile_rule_pattern(rule_id: str, pattern: str, *, case_insensitive: bool = False) -> Any:
    """The pattern of custom DLP rule ``rule_id``, compiled (:func:`compile_pattern`);
    ``ValueError`` naming the rule if RE2 cannot run it or it matches the empty string."""
    try:
        compiled = compile_pattern(pattern, case_insensitive=case_insensitive)
    except ValueError as exc:
        raise ValueError(f"DLP rule {rule_id!r}: {exc}") from None
    for probe in ("", "a", "0", " ", "a b-1@x.y\n"):
        if any(m.end() == m.start() for m in compiled.finditer(probe)):
            raise ValueError(f"DLP rule {rule_id!r}: pattern matches the empty string")
    return compiled


# The built-in DLP rules, id -> type: what ``disable_defaults`` and ``policy_overrides`` may
# name besides the custom rules. :mod:`mas.policy.dlp.defaults` builds these rules; a test
# (tests/unit/test_dlp.py) holds the two equal.
DLP_DEFAULT_RULES: Final[Mapping[str, str]] = {
    "secret_field": "password",
    "ssn": "ssn",
    "email": "email",
    "phone": "phone",
    "credit_card": "credit_card",
    "cvv": "cvv",
    "aws_access_key": "aws_access_key",
    "aws_secret_key": "aws_secret_key",
    "private_key": "private_key",
    "jwt": "jwt",
    "api_key": "api_key",
    "password": "password",
    "medical_record_number": "medical_record_number",
    "health_insurance_id": "health_insurance_id",
    "icd10": "icd10",
}
DLP_RESERVED_IDS: Final = ("scan_budget", "scan_depth", "scan_unsupported")  # the bounds' ids


class DlpRule(_Base, frozen=True):
    """A custom DLP rule; ``pattern`` is a regular expression in RE2's syntax (see
    :func:`compile_pattern`), matched in linear time."""

    id: Name
    type: Name
    pattern: str
    action: Action = "block"
    severity: Literal["low", "medium", "high", "critical"] = "medium"
    description: str = ""
    enabled: bool = True
    case_insensitive: bool = False

    def __post_init__(self) -> None:
        compile_rule_pattern(self.id, self.pattern, case_insensitive=self.case_insensitive)


class DlpConfig(_Base, frozen=True):
    """How custom DLP rules combine with the built-in ones."""

    merge_strategy: Literal["append", "replace"] = "append"
    disable_defaults: list[str] = []  # built-in rule types to switch off
    policy_overrides: dict[str, Action] = {}  # rule type -> action
    rules: list[DlpRule] = []

    def __post_init__(self) -> None:
        """Every name must resolve, so a mistake is an error with its path at load time."""
        default_names = set(DLP_DEFAULT_RULES) | set(DLP_DEFAULT_RULES.values())
        for name in self.disable_defaults:
            if name not in default_names:
                raise ValueError(f"DLP disable_defaults: no default rule {name!r}")
        custom_ids: set[str] = set()
        for spec in self.rules:
            if spec.id in custom_ids:
                raise ValueError(f"DLP rule {spec.id!r}: duplicate id")
            if spec.id in DLP_RESERVED_IDS:
                raise ValueError(f"DLP rule {spec.id!r}: reserved id")
            custom_ids.add(spec.id)
        known = default_names | custom_ids | {spec.type for spec in self.rules}
        for name in self.policy_overrides:
            if name not in known:
                raise ValueError(f"DLP policy_overrides: no rule or type {name!r}")


class AuditRetentionConfig(_Base, frozen=True):
    """How much of the audit chain the store keeps; nothing is trimmed by default.

    The oldest records go once there are more than ``max_records`` or once they
    are older than ``max_age`` seconds (whichever trims more), checked every
    ``interval`` seconds. The store keeps the seq and hash of the last record
    trimmed (the anchor), so that ``mas audit verify --store`` still tells a
    trim from a deletion. The newest record is always kept.
    """

    max_records: PosInt | None = None
    max_age: PosFloat | None = None  # seconds
    interval: PosFloat = 60.0  # seconds between trims


class AuditConfig(_Base, frozen=True):
    """The audit chain's key, and an optional JSONL audit file sink, rotated by size.

    The chain is HMAC-keyed: by the variable ``hmac_key_env`` names, else by the
    key file ``key_path`` (default ``.mas-keys/audit.key`` next to the store,
    made at first start; see ``mas.audit.keys``).
    """

    file_path: str | None = None
    max_bytes: PosInt = 10_000_000
    backup_count: NonNegInt = 5
    hmac_key_env: str | None = None  # environment variable holding the chain's HMAC key
    key_path: str | None = None  # the key file when hmac_key_env is not set
    retention: AuditRetentionConfig = AuditRetentionConfig()


class PrometheusConfig(_Base, frozen=True):
    """The HTTP endpoint with ``/metrics``, ``/healthz`` and ``/readyz`` (off unless ``port``).

    ``host`` is loopback by default: the metrics name every agent and its traffic.
    ``port: 0`` binds any free port (the log says which).
    """

    host: Annotated[str, msgspec.Meta(min_length=1, max_length=255)] = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] | None = None


class TelemetryConfig(_Base, frozen=True):
    """OpenTelemetry export settings, and the Prometheus endpoint (``prometheus``)."""

    enabled: bool = False
    service_name: str = "mas"
    service_namespace: str = "mas"
    environment: str = "dev"
    otlp_endpoint: str | None = None
    sample_ratio: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 1.0
    export_metrics: bool = True
    metrics_export_interval_ms: PosInt = 60000
    headers: dict[str, str] = {}
    prometheus: PrometheusConfig = PrometheusConfig()


class CircuitBreakerConfig(_Base, frozen=True):
    """Per-target circuit breaker (seconds)."""

    failure_threshold: PosInt = 5
    success_threshold: PosInt = 2
    timeout_seconds: PosFloat = 60.0
    window_seconds: PosFloat = 300.0
    half_open_max_trials: PosInt = 1  # trial messages in flight while half-open
    # Seconds a half-open trial may go without an outcome before its slot is freed
    # (a request nobody answers, a message that expired); unset: timeout_seconds.
    trial_timeout_seconds: PosFloat | None = None


class GatewayConfig(_Base, frozen=True):
    """The gateway policy section: validated now, enforced by the gateway."""

    redis: RedisConfig = RedisConfig()
    rate_limit: RateLimitConfig = RateLimitConfig()
    features: FeaturesConfig = FeaturesConfig()
    dlp: DlpConfig = DlpConfig()
    audit: AuditConfig = AuditConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    circuit_breaker: CircuitBreakerConfig = CircuitBreakerConfig()
