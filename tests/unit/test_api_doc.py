"""docs/api.md documents every public attribute of Agent and AgentMessage, and every keyword."""

from __future__ import annotations

import inspect
from pathlib import Path

from mas import Agent, AgentMessage
from mas.agent.message import DiscoveredAgent
from mas.envelope import Meta

API = (Path(__file__).resolve().parents[2] / "docs" / "api.md").read_text()


def _public(cls: type) -> set[str]:
    return {name for name in vars(cls) if not name.startswith("_")}


def test_every_public_attribute_of_agent_and_agent_message_is_documented() -> None:
    names = (_public(Agent) - {"on"}) | _public(AgentMessage) | {"on"}
    missing = sorted(name for name in names if f"`{name}" not in API and f" {name}(" not in API)
    assert missing == []


def test_every_constructor_keyword_is_documented() -> None:
    parameters = inspect.signature(Agent.__init__).parameters.values()
    keywords = [p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY]
    assert "handler_timeout" in keywords
    missing = [name for name in keywords if f"| `{name}` |" not in API]
    assert missing == []


def test_discovery_and_meta_fields_are_documented() -> None:
    fields = set(DiscoveredAgent.__struct_fields__) | (
        set(Meta.__struct_fields__) - {"version", "tracestate", "error"}
    )
    assert "attempt" in fields
    assert sorted(name for name in fields if f"`{name}`" not in API) == []
