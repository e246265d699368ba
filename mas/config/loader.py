"""Finding, reading, resolving, overriding and checking ``mas.yaml`` (the only config I/O)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import msgspec
import yaml  # type: ignore[import-untyped]

from ..errors import ConfigError
from ._base import CONFIG_ENV_VAR, CONFIG_FILE_NAME, WILDCARD
from .model import DenyRule, LoadedConfig, MasConfig, Permission

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
    for i, agent in enumerate(config.agents):
        for j, role in enumerate(agent.roles):
            if role not in config.roles:
                problems.append(
                    f"$.agents[{i}].roles[{j}]: unknown role {role!r}; define it under `roles:`"
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
    audit = msgspec.structs.replace(
        gateway.audit,
        file_path=res(gateway.audit.file_path),
        key_path=res(gateway.audit.key_path),
    )
    store = msgspec.structs.replace(config.store, path=res(config.store.path))
    return msgspec.structs.replace(
        config,
        store=store,
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
            if config.store.url is not None:  # the file's store.url would win over the seed's
                changes["store"] = msgspec.structs.replace(config.store, url=redis_url)
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
