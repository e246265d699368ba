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
   - ``MAS_REDIS_URL``            -> ``gateway.redis.url``, and ``store.url`` when the
     file sets it (the variable wins over both)

6. Whole-config checks (:func:`check_config`): unique agent ids, permissions name only
   listed agents (``"*"`` only in ``deny`` rules), all three server TLS paths or none.

"""

from __future__ import annotations

from ._base import CONFIG_ENV_VAR as CONFIG_ENV_VAR
from ._base import CONFIG_FILE_NAME as CONFIG_FILE_NAME
from ._base import WILDCARD as WILDCARD
from ._base import Action as Action
from ._base import AgentId as AgentId
from ._base import Name as Name
from ._base import NonNegInt as NonNegInt
from ._base import PosFloat as PosFloat
from ._base import PosInt as PosInt
from ._base import redact_url as redact_url
from ._base import split_host_port as split_host_port
from .gateway import AuditConfig as AuditConfig
from .gateway import AuditRetentionConfig as AuditRetentionConfig
from .gateway import CircuitBreakerConfig as CircuitBreakerConfig
from .gateway import DlpConfig as DlpConfig
from .gateway import DlpRule as DlpRule
from .gateway import FeaturesConfig as FeaturesConfig
from .gateway import GatewayConfig as GatewayConfig
from .gateway import PrometheusConfig as PrometheusConfig
from .gateway import RateLimitConfig as RateLimitConfig
from .gateway import RateLimitOverride as RateLimitOverride
from .gateway import RedisConfig as RedisConfig
from .gateway import TelemetryConfig as TelemetryConfig
from .loader import check_config as check_config
from .loader import find_config_file as find_config_file
from .loader import load_config as load_config
from .loader import parse_config as parse_config
from .model import AgentSpec as AgentSpec
from .model import AllowBidirectionalRule as AllowBidirectionalRule
from .model import AllowBroadcastRule as AllowBroadcastRule
from .model import AllowNetworkRule as AllowNetworkRule
from .model import AllowRule as AllowRule
from .model import AllowWildcardRule as AllowWildcardRule
from .model import DenyRule as DenyRule
from .model import LimitsConfig as LimitsConfig
from .model import LoadedConfig as LoadedConfig
from .model import MasConfig as MasConfig
from .model import Permission as Permission
from .model import RestartPolicy as RestartPolicy
from .model import RevokedConfig as RevokedConfig
from .model import RoleConfig as RoleConfig
from .model import StoreConfig as StoreConfig

__all__ = [
    "CONFIG_ENV_VAR",
    "CONFIG_FILE_NAME",
    "WILDCARD",
    "Action",
    "AgentId",
    "AgentSpec",
    "AllowBidirectionalRule",
    "AllowBroadcastRule",
    "AllowNetworkRule",
    "AllowRule",
    "AllowWildcardRule",
    "AuditConfig",
    "AuditRetentionConfig",
    "CircuitBreakerConfig",
    "DenyRule",
    "DlpConfig",
    "DlpRule",
    "FeaturesConfig",
    "GatewayConfig",
    "LimitsConfig",
    "LoadedConfig",
    "MasConfig",
    "Name",
    "NonNegInt",
    "Permission",
    "PosFloat",
    "PosInt",
    "PrometheusConfig",
    "RateLimitConfig",
    "RateLimitOverride",
    "RedisConfig",
    "RestartPolicy",
    "RevokedConfig",
    "RoleConfig",
    "StoreConfig",
    "TelemetryConfig",
    "check_config",
    "find_config_file",
    "load_config",
    "parse_config",
    "split_host_port",
]
