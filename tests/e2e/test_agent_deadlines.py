"""Request deadlines as an agent sees them: time left, late replies, the delivery window."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio
import trio.testing

from mas import Agent, AgentMessage, RequestTimeoutError
from mas.testing import TestPKI, make_config, open_test_server

BOTH_WAYS = [{"type": "allow_bidirectional", "agents": ["ping", "pong"]}]


class Slow(Agent[dict[str, Any]]):
    """Answers "work" after ``delay`` seconds, noting what it saw."""

    delay = 3.0

    def __init__(self, agent_id: str, **kwargs: Any) -> None:
        super().__init__(agent_id, **kwargs)
        self.time_left: list[float | None] = []
        self.answers: list[str] = []
        self.done = trio.Event()

    @Agent.on("work")
    async def work(self, message: AgentMessage) -> None:
        self.time_left.append(message.time_remaining())
        await trio.sleep(self.delay)
        self.answers.append(await message.reply("done", {}))
        self.done.set()


def _agent(cls: type[Agent[Any]], agent_id: str, port: int, pki: TestPKI) -> Any:
    return cls(agent_id, server_addr=f"127.0.0.1:{port}", tls=pki.client_ssl_context(agent_id))


async def test_a_handler_that_outlives_its_request_replies_quietly(
    pki: TestPKI, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mas")
    async with open_test_server(make_config(["ping", "pong"], BOTH_WAYS), pki) as server:
        port = server.address.port
        async with (
            _agent(Agent, "ping", port, pki) as ping,
            _agent(Slow, "pong", port, pki) as pong,
        ):
            with pytest.raises(RequestTimeoutError):
                await ping.request("pong", "work", {}, timeout=1)
            await pong.done.wait()
    [left] = pong.time_left
    assert left is not None and 0 < left <= 1
    assert pong.answers == [""]  # dropped, not raised: nobody waits for it
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    late = [r for r in caplog.records if "after the request's deadline" in r.getMessage()]
    assert len(late) == 1


async def test_the_window_an_agent_asks_for_fits_its_inbox(pki: TestPKI) -> None:
    # A server whose default window is larger than the agent's inbox must not be able
    # to fill it: the agent asks for a window it can hold.
    config = make_config(["ping", "pong"], BOTH_WAYS, limits={"prefetch": 100_000})
    with trio.fail_after(20):
        async with open_test_server(config, pki) as server:
            async with _agent(Agent, "pong", server.address.port, pki):
                [session] = server.registry.of_agent("pong")
                assert session.prefetch == 1024
