"""The agent SDK: subclass ``Agent``, declare handlers, run it against a ``mas`` server."""

from .agent import Agent as Agent
from .message import AgentMessage as AgentMessage
from .message import DiscoveredAgent as DiscoveredAgent
from .message import TLSFiles as TLSFiles

__all__ = ["Agent", "AgentMessage", "DiscoveredAgent", "TLSFiles"]
