"""The ``mas.yaml`` model and its loader: the only module that reads a config file.

The file decodes into frozen msgspec Structs; unknown keys are errors, and every
error is a :class:`~mas.errors.ConfigError` whose message names the file and the
JSON path of the offending value (``$.agents[1].instances``).

Loading, in order:

1. :func:`find_config_file`: the explicit argument (a file, or a directory holding
   ``mas.yaml``), else ``$MAS_RUNNER_CONFIG_FILE``, else ``mas.yaml`` in the working
   directory or the nearest parent that has one.
2. YAML is parsed safely; duplicate keys in a mapping are an error; an empty file is
   an empty config (every default); a top level that is not a mapping is an error.
3. The mapping is decoded into :class:`MasConfig` (types, constraints, per-struct checks).
4. Relative paths in the file (``tls_*_path``, agents' ``tls_cert_path`` /
   ``tls_key_path``, ``gateway.audit.file_path``) resolve against the file's directory;
   ``~`` is expanded. The returned config holds absolute path strings.
5. Environment variables override the file (a variable that is unset or empty is
   ignored; path values resolve against the working directory):

   - ``MAS_SERVER_LISTEN_ADDR``   -> ``server_listen_addr``
   - ``MAS_TRUST_DOMAIN``         -> ``trust_domain``
   - ``MAS_TLS_CA_PATH``          -> ``tls_ca_path``
   - ``MAS_TLS_SERVER_CERT_PATH`` -> ``tls_server_cert_path``
   - ``MAS_TLS_SERVER_KEY_PATH``  -> ``tls_server_key_path``
   - ``MAS_REDIS_URL``            -> ``gateway.redis.url``

6. Whole-config checks (:func:`check_config`): unique agent ids, permissions name only
   listed agents (``"*"`` only in ``deny`` rules), all three server TLS paths or none.

The ``gateway`` section is validated now; its settings are enforced by the gateway.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import msgspec
import yaml  # type: ignore[import-untyped]

from mas.errors import ConfigError

CONFIG_ENV_VAR: Final = "MAS_RUNNER_CONFIG_FILE"  # names the config file (or its directory)
CONFIG_FILE_NAME: Final = "mas.yaml"  # the file searched for, upward from the working directory

_AGENT_ID_PATTERN: Final = r"^[A-Za-z0-9_-]{1,64}$"  # also the SPIFFE path segment
_TRUST_DOMAIN_PATTERN: Final = r"^[a-z0-9._-]+$"  # SPIFFE trust domain characters
_HOST_RE: Final = re.compile(r"^[A-Za-z0-9._-]+$")
_REDIS_SCHEMES: Final = ("redis://", "rediss://", "unix://")
WILDCARD: Final = "*"  # in a deny rule: any sender or any target

PosInt = Annotated[int, msgspec.Meta(gt=0)]
NonNegInt = Annotated[int, msgspec.Meta(ge=0)]
PosFloat = Annotated[float, msgspec.Meta(gt=0)]
AgentId = Annotated[str, msgspec.Meta(pattern=_AGENT_ID_PATTERN)]
Name = Annotated[str, msgspec.Meta(min_length=1)]
Action = Literal["block", "redact", "alert"]


class _Base(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Common options: immutable, typo-proof, keyword-only."""


def split_host_port(addr: str) -> tuple[str, int]:
    """Split ``host:port`` or ``[ipv6]:port`` into (host without brackets, port).

    Raises ValueError naming the expected shape when ``addr`` does not fit.
    """
    shape = f"expected 'host:port' or '[ipv6]:port' with port 0..65535, got {addr!r}"
    host, sep, port_text = addr.rpartition(":")
    if not sep or not host or not port_text.isascii() or not port_text.isdigit():
        raise ValueError(shape)
    port = int(port_text)
    if port > 65535:
        raise ValueError(shape)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{shape}: {host!r} is not an IPv6 address") from None
    elif ":" in host:
        raise ValueError(f"{shape}: put an IPv6 address in brackets")
    elif not _HOST_RE.match(host):
        raise ValueError(shape)
    return host, port


# --- server-side sections ---------------------------------------------------------------


class StoreConfig(_Base, frozen=True):
    """Where queues, state and audit records live (more backends come later)."""

    backend: Literal["memory"] = "memory"


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

    def __post_init__(self) -> None:
        if self.class_path is not None and not _is_class_path(self.class_path):
            raise ValueError(
                f"class_path must look like 'package.module:ClassName', got {self.class_path!r}"
            )
        if (self.tls_cert_path is None) != (self.tls_key_path is None):
            raise ValueError("give both tls_cert_path and tls_key_path, or neither")


# --- gateway (validated now, enforced by the gateway) -----------------------------------


class RedisConfig(_Base, frozen=True):
    """Redis connection used by the gateway's shared state."""

    url: str = "redis://localhost:6379"
    decode_responses: bool = True
    socket_timeout: PosFloat | None = None  # seconds; None = no timeout

    def __post_init__(self) -> None:
        if not self.url.startswith(_REDIS_SCHEMES):
            raise ValueError(f"url must start with redis://, rediss:// or unix://: {self.url!r}")


class RateLimitConfig(_Base, frozen=True):
    """Messages each agent may send."""

    per_minute: PosInt = 100
    per_hour: PosInt = 1000


class FeaturesConfig(_Base, frozen=True):
    """Gateway features switched on or off."""

    dlp: bool = True
    rbac: bool = False
    circuit_breaker: bool = True


class DlpRule(_Base, frozen=True):
    """A custom DLP rule; ``pattern`` is a Python regular expression."""

    id: Name
    type: Name
    pattern: str
    action: Action = "block"
    severity: Literal["low", "medium", "high", "critical"] = "medium"
    description: str = ""
    enabled: bool = True
    case_insensitive: bool = False

    def __post_init__(self) -> None:
        try:
            re.compile(self.pattern, re.IGNORECASE if self.case_insensitive else 0)
        except re.error as exc:
            raise ValueError(f"DLP rule {self.id!r}: pattern does not compile: {exc}") from None


class DlpConfig(_Base, frozen=True):
    """How custom DLP rules combine with the built-in ones."""

    merge_strategy: Literal["append", "replace"] = "append"
    disable_defaults: list[str] = []  # built-in rule types to switch off
    policy_overrides: dict[str, Action] = {}  # rule type -> action
    rules: list[DlpRule] = []


class AuditConfig(_Base, frozen=True):
    """Optional JSONL audit file sink, rotated by size."""

    file_path: str | None = None
    max_bytes: PosInt = 10_000_000
    backup_count: NonNegInt = 5


class TelemetryConfig(_Base, frozen=True):
    """OpenTelemetry export settings."""

    enabled: bool = False
    service_name: str = "mas"
    service_namespace: str = "mas"
    environment: str = "dev"
    otlp_endpoint: str | None = None
    sample_ratio: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 1.0
    export_metrics: bool = True
    metrics_export_interval_ms: PosInt = 60000
    headers: dict[str, str] = {}


class CircuitBreakerConfig(_Base, frozen=True):
    """Per-target circuit breaker (seconds)."""

    failure_threshold: PosInt = 5
    success_threshold: PosInt = 2
    timeout_seconds: PosFloat = 60.0
    window_seconds: PosFloat = 300.0


class GatewayConfig(_Base, frozen=True):
    """The gateway policy section: validated now, enforced by the gateway."""

    redis: RedisConfig = RedisConfig()
    rate_limit: RateLimitConfig = RateLimitConfig()
    features: FeaturesConfig = FeaturesConfig()
    dlp: DlpConfig = DlpConfig()
    audit: AuditConfig = AuditConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    circuit_breaker: CircuitBreakerConfig = CircuitBreakerConfig()


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
    gateway: GatewayConfig = GatewayConfig()

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


# --- whole-config checks ----------------------------------------------------------------

_TLS_FIELDS: Final = ("tls_ca_path", "tls_server_cert_path", "tls_server_key_path")


def _rule_agent_refs(rule: Permission) -> list[tuple[str, str]]:
    """(path suffix, agent id) for every agent a rule names: all its str and list fields."""
    refs: list[tuple[str, str]] = []
    for name in rule.__struct_fields__:
        value = getattr(rule, name)
        if isinstance(value, str):
            refs.append((name, value))
        elif isinstance(value, list):
            refs.extend((f"{name}[{i}]", item) for i, item in enumerate(value))
    return refs


def check_config(config: MasConfig, *, source: str = "<config>") -> None:
    """Run the checks that span the whole config; raise ConfigError listing every problem.

    :func:`parse_config` calls this; call it yourself on a MasConfig built in code.
    """
    problems: list[str] = []
    first_seen: dict[str, int] = {}
    for i, agent in enumerate(config.agents):
        if agent.agent_id in first_seen:
            problems.append(
                f"$.agents[{i}].agent_id: duplicate agent id {agent.agent_id!r}"
                f" (first at $.agents[{first_seen[agent.agent_id]}])"
            )
        else:
            first_seen[agent.agent_id] = i
    for i, rule in enumerate(config.permissions):
        for suffix, name in _rule_agent_refs(rule):
            where = f"$.permissions[{i}].{suffix}"
            if name == WILDCARD:
                if not isinstance(rule, DenyRule):
                    problems.append(
                        f"{where}: '*' is allowed only in deny rules (use allow_wildcard)"
                    )
            elif name not in first_seen:
                problems.append(
                    f"{where}: unknown agent {name!r}; a permission may name only agents"
                    " listed under `agents:`"
                )
    given = [f for f in _TLS_FIELDS if getattr(config, f) is not None]
    if given and len(given) < len(_TLS_FIELDS):
        missing = ", ".join(f"$.{f}" for f in _TLS_FIELDS if f not in given)
        problems.append(
            f"{missing}: missing; give all three of tls_ca_path, tls_server_cert_path and"
            " tls_server_key_path, or none (a development PKI is then made at run time,"
            " loopback only)"
        )
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))


# --- parsing -----------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):  # type: ignore[misc]
    """yaml's safe loader, except that a key repeated in one mapping is an error."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                continue  # the base class reports unhashable keys; msgspec, non-str ones
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r}",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _parse_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        raise ConfigError(f"{where}: invalid YAML: {exc.problem or exc.context}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML: {exc}") from exc


def _abspath(value: str, base: Path) -> str:
    return os.path.abspath(base / os.path.expanduser(value))


def _resolve_paths(config: MasConfig, base_dir: Path) -> MasConfig:
    def res(value: str | None) -> str | None:
        return None if value is None else _abspath(value, base_dir)

    agents = [
        msgspec.structs.replace(
            a, tls_cert_path=res(a.tls_cert_path), tls_key_path=res(a.tls_key_path)
        )
        for a in config.agents
    ]
    gateway = config.gateway
    audit = msgspec.structs.replace(gateway.audit, file_path=res(gateway.audit.file_path))
    return msgspec.structs.replace(
        config,
        tls_ca_path=res(config.tls_ca_path),
        tls_server_cert_path=res(config.tls_server_cert_path),
        tls_server_key_path=res(config.tls_server_key_path),
        agents=agents,
        gateway=msgspec.structs.replace(gateway, audit=audit),
    )


_ENV_FIELDS: Final = (  # (variable, MasConfig field, is a path)
    ("MAS_SERVER_LISTEN_ADDR", "server_listen_addr", False),
    ("MAS_TRUST_DOMAIN", "trust_domain", False),
    ("MAS_TLS_CA_PATH", "tls_ca_path", True),
    ("MAS_TLS_SERVER_CERT_PATH", "tls_server_cert_path", True),
    ("MAS_TLS_SERVER_KEY_PATH", "tls_server_key_path", True),
)
_ENV_REDIS_URL: Final = "MAS_REDIS_URL"


def _apply_env(config: MasConfig, env: Mapping[str, str], cwd: Path, source: str) -> MasConfig:
    changes: dict[str, Any] = {}
    applied: list[str] = []
    for var, field, is_path in _ENV_FIELDS:
        value = env.get(var)
        if value:
            changes[field] = _abspath(value, cwd) if is_path else value
            applied.append(var)
    redis_url = env.get(_ENV_REDIS_URL)
    if redis_url:
        applied.append(_ENV_REDIS_URL)
    if not applied:
        return config
    try:
        if redis_url:
            redis = msgspec.structs.replace(config.gateway.redis, url=redis_url)
            changes["gateway"] = msgspec.structs.replace(config.gateway, redis=redis)
        updated = msgspec.structs.replace(config, **changes)
        # replace() runs __post_init__ but not Meta constraints: validate the result fully.
        msgspec.convert(msgspec.to_builtins(updated), MasConfig)
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"{source}: invalid value from the environment ({', '.join(applied)}): {exc}"
        ) from exc
    return updated


def parse_config(
    text: str,
    *,
    base_dir: Path,
    source: str = "<string>",
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> MasConfig:
    """Decode, resolve, override and check the YAML ``text`` of a config file.

    ``base_dir`` anchors relative paths in the text; ``source`` names the text in
    errors; ``env`` (default ``os.environ``) supplies the overrides listed in the
    module docstring, whose paths resolve against ``cwd`` (default: the working
    directory). Raises ConfigError.
    """
    raw = _parse_yaml(text, source)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{source}: the top level must be a mapping of keys (server_listen_addr:,"
            f" agents:, ...), not a {type(raw).__name__}"
        )
    try:
        config = msgspec.convert(raw, MasConfig)
    except msgspec.ValidationError as exc:
        message = str(exc)
        if " - at `$" not in message:  # msgspec omits the path for the top level
            message += " - at `$`"
        raise ConfigError(f"{source}: {message}") from exc
    config = _resolve_paths(config, base_dir)
    environ = os.environ if env is None else env
    config = _apply_env(config, environ, Path.cwd() if cwd is None else cwd, source)
    check_config(config, source=source)
    return config


# --- finding and loading the file -------------------------------------------------------


def _config_at(value: str | os.PathLike[str], cwd: Path, origin: str) -> Path:
    path = Path(os.path.abspath(cwd / os.path.expanduser(value)))
    if path.is_dir():
        path = path / CONFIG_FILE_NAME
    if not path.is_file():
        raise ConfigError(f"config file {path} (from {origin}) does not exist")
    return path


def find_config_file(
    explicit: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Path:
    """Return the absolute path of the config file to use.

    Looks at ``explicit`` (a file, or a directory holding ``mas.yaml``), then
    ``$MAS_RUNNER_CONFIG_FILE``, then ``mas.yaml`` in ``cwd`` and each of its parents.
    Raises ConfigError saying where it looked.
    """
    start = Path(os.path.abspath(Path.cwd() if cwd is None else cwd))
    if explicit is not None:
        return _config_at(explicit, start, "the given path")
    environ = os.environ if env is None else env
    from_env = environ.get(CONFIG_ENV_VAR)
    if from_env:
        return _config_at(from_env, start, f"${CONFIG_ENV_VAR}")
    for directory in (start, *start.parents):
        candidate = directory / CONFIG_FILE_NAME
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"no {CONFIG_FILE_NAME} found in {start} or any parent directory, and"
        f" ${CONFIG_ENV_VAR} is not set; pass the config file's path, set"
        f" {CONFIG_ENV_VAR}, or copy mas.yaml.example to {CONFIG_FILE_NAME}"
    )


def load_config(
    explicit: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> LoadedConfig:
    """Find (see :func:`find_config_file`), read and parse the config file."""
    path = find_config_file(explicit, env=env, cwd=cwd)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    config = parse_config(text, base_dir=path.parent, source=str(path), env=env, cwd=cwd)
    return LoadedConfig(path=path, config=config)
