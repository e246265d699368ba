"""Agents for the crash tests: a sender that prints each accepted number, a recorder."""

from __future__ import annotations

import trio

from mas import Agent, AgentMessage, ConnectionClosedError, RequestTimeoutError


class Sender(Agent[dict[str, object]]):
    """Sends numbers 0..count-1, printing each once the server accepted it."""

    def __init__(self, agent_id: str, *, count: int, **kwargs: object) -> None:
        super().__init__(agent_id, **kwargs)  # type: ignore[arg-type]
        self.count = count

    async def on_start(self) -> None:
        n = 0
        with trio.fail_after(120):
            while n < self.count:
                try:
                    await self.send("recorder", "number", {"n": n})
                except (ConnectionClosedError, RequestTimeoutError):
                    await trio.sleep(0.05)  # fate unknown: send it again (at least once)
                    continue
                print(f"accepted {n}", flush=True)
                n += 1
        self.stop_runtime()


class Recorder(Agent[dict[str, object]]):
    """Records every number it receives in its state."""

    @Agent.on("number")
    async def number(self, message: AgentMessage) -> None:
        await self.update_state({f"n{message.data['n']}": True})
