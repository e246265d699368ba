"""SDK agents and a wait that the end-to-end counting tests share.

``Echo`` answers ``ping`` with ``pong`` (the payload back), ``Sink`` counts ``note``
messages, ``Plain`` only sends; ``settled`` waits until the server has made a number of
DELIVERED records, that is until every ack it expects has been applied.
"""

from __future__ import annotations

from typing import Any

import trio

from mas import Agent, AgentMessage


class Echo(Agent[dict[str, Any]]):
    @Agent.on("ping")
    async def on_ping(self, message: AgentMessage) -> None:
        await message.reply("pong", message.data)


class Sink(Agent[dict[str, Any]]):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.received = 0
        self.changed = trio.Event()

    @Agent.on("note")
    async def on_note(self, message: AgentMessage) -> None:
        self.received += 1
        self.changed.set()


class Plain(Agent[dict[str, Any]]):
    pass


async def settled(server: Any, delivered: int) -> None:
    """Wait until ``delivered`` DELIVERED records were made (every ack applied)."""
    # A counter the server owns, polled under the caller's fail_after.
    while server.audit.counts["DELIVERED"] < delivered:  # noqa: ASYNC110
        await trio.sleep(0.01)
