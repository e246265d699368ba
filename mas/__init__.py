"""mas: a Trio-native, secure runtime for multi-agent systems.

Agents are untrusted clients with a cryptographic identity (the SPIFFE URI in
their client certificate); the server authenticates, authorizes
(deny-by-default) and routes every message with at-least-once delivery.

The public SDK::

    from mas import Agent, AgentMessage
"""

from ._version import __version__ as __version__
from .agent import Agent as Agent
from .agent import AgentMessage as AgentMessage
from .agent import DiscoveredAgent as DiscoveredAgent
from .agent import TLSFiles as TLSFiles
from .config import LoadedConfig as LoadedConfig
from .config import MasConfig as MasConfig
from .config import load_config as load_config
from .errors import (
    AgentLoadError as AgentLoadError,
)
from .errors import (
    CertificateError as CertificateError,
)
from .errors import (
    CircuitOpenError as CircuitOpenError,
)
from .errors import (
    ConfigError as ConfigError,
)
from .errors import (
    ConnectionClosedError as ConnectionClosedError,
)
from .errors import (
    InvalidMessageError as InvalidMessageError,
)
from .errors import (
    MasError as MasError,
)
from .errors import (
    NotFoundError as NotFoundError,
)
from .errors import (
    PermissionDeniedError as PermissionDeniedError,
)
from .errors import (
    RateLimitedError as RateLimitedError,
)
from .errors import (
    RejectedError as RejectedError,
)
from .errors import (
    RemoteError as RemoteError,
)
from .errors import (
    RemoteHandlerError as RemoteHandlerError,
)
from .errors import (
    RemoteValidationError as RemoteValidationError,
)
from .errors import (
    ReplyTooLateError as ReplyTooLateError,
)
from .errors import (
    ReplyValidationError as ReplyValidationError,
)
from .errors import (
    RequestTimeoutError as RequestTimeoutError,
)
from .errors import (
    ResourceExhaustedError as ResourceExhaustedError,
)
from .errors import (
    StateConflictError as StateConflictError,
)
from .errors import (
    StateError as StateError,
)
from .errors import (
    UnauthenticatedError as UnauthenticatedError,
)
from .errors import (
    UnavailableError as UnavailableError,
)

__all__ = [
    "Agent",
    "AgentLoadError",
    "AgentMessage",
    "CertificateError",
    "CircuitOpenError",
    "ConfigError",
    "ConnectionClosedError",
    "DiscoveredAgent",
    "InvalidMessageError",
    "LoadedConfig",
    "MasConfig",
    "MasError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitedError",
    "RejectedError",
    "RemoteError",
    "RemoteHandlerError",
    "RemoteValidationError",
    "ReplyTooLateError",
    "ReplyValidationError",
    "RequestTimeoutError",
    "ResourceExhaustedError",
    "StateConflictError",
    "StateError",
    "TLSFiles",
    "UnauthenticatedError",
    "UnavailableError",
    "load_config",
]
