"""The ``mas.yaml`` model: server sections, permissions, agents, and the whole file."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import msgspec

from ._base import (
    _TRUST_DOMAIN_PATTERN,
    AgentId,
    Name,
    NonNegInt,
    PosFloat,
    PosInt,
    _Base,
    split_host_port,
)
from .gateway import GatewayConfig, RateLimitOverride

# --- server-side sections ---------------------------------------------------------------


class StoreConfig(_Base, frozen=True):
    """Where queues, state and audit records live.

    ``sqlite`` (the default) is a file next to mas.yaml (``path`` overrides it);
    ``sync`` says when a write counts as done: ``full`` (the default) once it is
    flushed to disk, so it survives a power loss; ``normal`` once it is committed,
    so it survives a killed server but a power loss may undo the last commits.
    ``redis`` uses ``url``, or the seed's ``gateway.redis.url`` when ``url`` is
    not given; ``memory`` keeps nothing across restarts.

    On ``redis`` a message is accepted once it is in Redis's memory, unless
    ``accept_replicas`` (``WAIT``: that many replicas have it) or ``accept_fsync``
    (``WAITAOF``, Redis 7.2 or newer: Redis fsynced its append-only file, and so did
    ``accept_replicas`` replicas) make the sender's answer wait, at most
    ``accept_timeout`` seconds; past it the sender is answered ``UNAVAILABLE
    store_not_durable`` (the message may still be delivered: at-least-once).
    """

    backend: Literal["memory", "sqlite", "redis"] = "sqlite"
    path: str | None = None  # sqlite file; default: mas.sqlite3 next to mas.yaml
    sync: Literal["full", "normal"] | None = None  # sqlite only; default: full
    url: str | None = None  # redis URL; default: gateway.redis.url
    # redis only: refuse to start unless Redis keeps accepted messages through a crash
    # (appendonly yes, appendfsync everysec or always); otherwise a loud warning.
    require_durable: bool | None = None
    accept_replicas: NonNegInt | None = None  # redis only; default 0 (no WAIT)
    accept_fsync: bool | None = None  # redis only; default false (no WAITAOF)
    accept_timeout: PosFloat | None = None  # redis only; seconds, default 1.0

    def __post_init__(self) -> None:
        if self.path is not None and self.backend != "sqlite":
            raise ValueError("path is a setting of the sqlite backend")
        if self.sync is not None and self.backend != "sqlite":
            raise ValueError("sync is a setting of the sqlite backend")
        if self.url is not None and self.backend != "redis":
            raise ValueError("url is a setting of the redis backend")
        for name in ("require_durable", "accept_replicas", "accept_fsync", "accept_timeout"):
            if getattr(self, name) is not None and self.backend != "redis":
                raise ValueError(f"{name} is a setting of the redis backend")


class LimitsConfig(_Base, frozen=True):
    """Server limits. Sizes in bytes, durations in float seconds; every value is > 0."""

    max_message_bytes: PosInt = 1_048_576  # largest data_json / envelope accepted
    handshake_timeout: PosFloat = 10.0  # TLS handshake deadline
    hello_timeout: PosFloat = (
        10.0  # a new stream must send its first message (Hello, request) within this
    )
    write_timeout: PosFloat = 30.0  # a client that reads nothing for this long loses its stream
    max_concurrent_streams: PosInt = 64  # HTTP/2 streams per connection
    max_connections: PosInt = 20_000
    max_sessions_per_agent: PosInt = 64
    max_queue_length: PosInt = 10_000  # per agent queue, while offline too
    max_message_age: PosFloat = 86_400.0  # queued messages older than this are dead-lettered
    prefetch: PosInt = 64  # in-flight deliveries per session
    max_attempts: PosInt = 5  # deliveries before dead-lettering
    redelivery_backoff: PosFloat = 0.5  # first retry delay, doubled per attempt
    max_redelivery_backoff: PosFloat = 30.0
    ack_timeout: PosFloat = 120.0  # an unacked delivery is redelivered after this
    max_request_timeout: PosFloat = 3_600.0
    max_state_bytes: PosInt = 1_048_576
    shutdown_grace: PosFloat = 10.0  # drain time on SIGINT/SIGTERM
    # -- what one client may make the server do (past a limit: GOAWAY or a status) --
    idle_timeout: PosFloat = 300.0  # a connection with no open RPC for this long is closed
    max_connections_per_identity: PosInt = 256  # open connections of one agent id
    max_connections_per_address: PosInt = 4_096  # open connections from one IP address
    max_streams_per_second: PosInt = 500  # new HTTP/2 streams per connection (rapid reset)
    max_pings_per_second: PosInt = 100  # HTTP/2 PING frames per connection
    max_settings_per_second: PosInt = 100  # HTTP/2 SETTINGS frames per connection
    max_output_bytes: PosInt = 1_048_576  # a connection's unsent output above which reading stops
    max_buffered_bytes: PosInt = 8_388_608  # unfinished messages one connection may hold
    unfinished_message_timeout: PosFloat = 30.0  # a begun message must be complete within this
    max_header_bytes: PosInt = 16_384  # one header block, as sent and decoded (RFC 9113 6.5.2)
    max_headers: PosInt = 100  # header fields in one header block
    control_rpcs_per_minute: PosInt = 1_200  # GetState/UpdateState/ResetState/Discover per agent
    refusal_audit_interval: PosFloat = 60.0  # repeated refusals: one audit record per this

    def __post_init__(self) -> None:
        if self.max_redelivery_backoff < self.redelivery_backoff:
            raise ValueError("max_redelivery_backoff must be >= redelivery_backoff")


# --- permissions (a tagged union on `type`) ---------------------------------------------


class _Rule(_Base, frozen=True, tag_field="type"):
    """Base of the permission rules; the YAML ``type`` key selects the subclass."""


class AllowRule(_Rule, frozen=True, tag="allow"):
    """``sender`` may send to each of ``targets``."""

    sender: Name
    targets: Annotated[list[Name], msgspec.Meta(min_length=1)]


class _GroupRule(_Rule, frozen=True):
    """A rule over a group of two or more distinct agents."""

    agents: Annotated[list[Name], msgspec.Meta(min_length=2)]

    def __post_init__(self) -> None:
        if len(set(self.agents)) != len(self.agents):
            raise ValueError("agents lists the same agent twice")


class AllowBidirectionalRule(_GroupRule, frozen=True, tag="allow_bidirectional"):
    """Every listed agent may send to every other listed agent."""


class AllowNetworkRule(_GroupRule, frozen=True, tag="allow_network"):
    """A group of agents; one-way (list order is the direction) unless ``bidirectional``."""

    bidirectional: bool = True


class AllowBroadcastRule(_Rule, frozen=True, tag="allow_broadcast"):
    """``sender`` may send to each receiver (``None``: every other listed agent)."""

    sender: Name
    receivers: Annotated[list[Name], msgspec.Meta(min_length=1)] | None = None


class AllowWildcardRule(_Rule, frozen=True, tag="allow_wildcard"):
    """``agent_id`` may send to every other listed agent."""

    agent_id: Name


class DenyRule(_Rule, frozen=True, tag="deny"):
    """``sender`` may not send to ``targets``; either may be ``"*"``. Deny always wins."""

    sender: Name
    targets: Annotated[list[Name], msgspec.Meta(min_length=1)]


Permission = (
    AllowRule
    | AllowBidirectionalRule
    | AllowNetworkRule
    | AllowBroadcastRule
    | AllowWildcardRule
    | DenyRule
)


# --- agents ------------------------------------------------------------------------------


class RestartPolicy(_Base, frozen=True):
    """How the supervisor restarts a crashed agent instance (seconds)."""

    max_restarts: NonNegInt = 5  # restarts allowed within `window`; 0 = never restart
    window: PosFloat = 60.0
    backoff_initial: PosFloat = 0.5  # first restart delay, doubled per restart
    backoff_max: PosFloat = 10.0

    def __post_init__(self) -> None:
        if self.backoff_max < self.backoff_initial:
            raise ValueError("backoff_max must be >= backoff_initial")


def _is_class_path(value: str) -> bool:
    module, sep, name = value.partition(":")
    return bool(sep) and name.isidentifier() and all(p.isidentifier() for p in module.split("."))


class AgentSpec(_Base, frozen=True):
    """One allowlisted agent: its identity, where its class is, and how to run it."""

    agent_id: AgentId
    class_path: str | None = None  # "package.module:ClassName"; None = runs elsewhere
    instances: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 1
    capabilities: list[str] = []
    metadata: dict[str, Any] = {}
    tls_cert_path: str | None = None  # both or neither
    tls_key_path: str | None = None
    init_kwargs: dict[str, Any] = {}
    restart: RestartPolicy = RestartPolicy()
    roles: list[Name] = []  # RBAC roles (see `roles:`), used when gateway.features.rbac is on
    rate_limit: RateLimitOverride | None = None  # overrides gateway.rate_limit for this agent

    def __post_init__(self) -> None:
        if self.class_path is not None and not _is_class_path(self.class_path):
            raise ValueError(
                f"class_path must look like 'package.module:ClassName', got {self.class_path!r}"
            )
        if (self.tls_cert_path is None) != (self.tls_key_path is None):
            raise ValueError("give both tls_cert_path and tls_key_path, or neither")


# --- RBAC and revocation -----------------------------------------------------------------

_ROLE_PERMISSION_RE: Final = re.compile(r"^send:[A-Za-z0-9_*?\[\]-]{1,64}$")


class RoleConfig(_Base, frozen=True):
    """A role: what agents holding it may do (``send:<target-glob>``, e.g. ``send:worker_*``)."""

    permissions: list[Name] = []

    def __post_init__(self) -> None:
        for permission in self.permissions:
            if not _ROLE_PERMISSION_RE.match(permission):
                raise ValueError(
                    f"role permission {permission!r} must look like 'send:<target-glob>'"
                )


class RevokedConfig(_Base, frozen=True):
    """Certificates refused even though they chain to the CA."""

    serials: list[Annotated[str, msgspec.Meta(pattern=r"^(0x[0-9a-fA-F]+|[0-9]+)$")]] = []
    # SHA-256 fingerprints: exactly 64 hex digits once colons are removed (checked below).
    fingerprints: list[
        Annotated[str, msgspec.Meta(pattern=r"^[0-9a-fA-F:]+$", max_length=256)]
    ] = []

    def __post_init__(self) -> None:
        for fingerprint in self.fingerprints:
            if len(fingerprint.replace(":", "")) != 64:
                raise ValueError(
                    f"fingerprint {fingerprint!r} must be 64 hex digits (SHA-256 of the DER "
                    "certificate), colons allowed between them"
                )

    def serial_numbers(self) -> frozenset[int]:
        """The revoked serials as integers (decimal or 0x-hex in the file)."""
        return frozenset(int(s, 16) if s.lower().startswith("0x") else int(s) for s in self.serials)

    def sha256_fingerprints(self) -> frozenset[str]:
        """The revoked SHA-256 fingerprints, lowercase hex without colons."""
        return frozenset(f.replace(":", "").lower() for f in self.fingerprints)


# --- the whole file ---------------------------------------------------------------------


class MasConfig(_Base, frozen=True):
    """The decoded ``mas.yaml``. Build it with :func:`load_config` or :func:`parse_config`."""

    server_listen_addr: str = "127.0.0.1:50051"  # "host:port" or "[::1]:port"; port 0 = any
    tls_ca_path: str | None = None  # all three TLS paths, or none (dev PKI, loopback only)
    tls_server_cert_path: str | None = None
    tls_server_key_path: str | None = None
    trust_domain: Annotated[
        str, msgspec.Meta(pattern=_TRUST_DOMAIN_PATTERN, min_length=1, max_length=255)
    ] = "mas"
    store: StoreConfig = StoreConfig()
    limits: LimitsConfig = LimitsConfig()
    permissions: list[Permission] = []
    agents: list[AgentSpec] = []
    roles: dict[Name, RoleConfig] = {}
    revoked: RevokedConfig = RevokedConfig()
    gateway: GatewayConfig = GatewayConfig()
    # The server's control socket (`mas status`, `mas top`, `mas reload`, `mas dlq replay`);
    # relative paths resolve against mas.yaml's directory. Default: mas.yaml.sock next to it.
    control_socket: Annotated[str, msgspec.Meta(min_length=1)] | None = None

    def __post_init__(self) -> None:
        try:
            split_host_port(self.server_listen_addr)
        except ValueError as exc:
            raise ValueError(f"invalid server_listen_addr: {exc}") from None

    @property
    def listen_host(self) -> str:
        """The host part of ``server_listen_addr``, without IPv6 brackets."""
        return split_host_port(self.server_listen_addr)[0]

    @property
    def listen_port(self) -> int:
        """The port part of ``server_listen_addr`` (0 = any free port)."""
        return split_host_port(self.server_listen_addr)[1]

    @property
    def tls_configured(self) -> bool:
        """True when all three server TLS paths are given."""
        return None not in (self.tls_ca_path, self.tls_server_cert_path, self.tls_server_key_path)

    @property
    def agent_ids(self) -> frozenset[str]:
        """The ids of every allowlisted agent."""
        return frozenset(a.agent_id for a in self.agents)

    def agent(self, agent_id: str) -> AgentSpec | None:
        """The spec of ``agent_id``, or None if it is not listed."""
        return next((a for a in self.agents if a.agent_id == agent_id), None)


class LoadedConfig(msgspec.Struct, frozen=True, kw_only=True):
    """A config together with the absolute path of the file it came from."""

    path: Path
    config: MasConfig

    @property
    def base_dir(self) -> Path:
        """The file's directory: relative paths in the file resolve against it."""
        return self.path.parent
