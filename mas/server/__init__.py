"""The MAS server: mTLS gRPC listener, identity, routing and sessions."""

from .app import MasServer as MasServer
from .grpc import BoundAddress as BoundAddress

__all__ = ["BoundAddress", "MasServer"]
