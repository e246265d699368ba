"""``mas.Agent`` against a server that speaks only the base protocol (mas-framework 0.4).

Such a server ignores the stream fast path (send/request/reply frames) and never answers
them; its ``Welcome`` does not announce ``stream_messages``, so the SDK sends through the
unary ``Send``, ``Request`` and ``Reply`` RPCs and acks one delivery per frame. The server
is the stand-in of ``tests/base_server.py``, over real loopback mTLS.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
import trio
from base_server import BaseServer, open_base_server

from mas import Agent, AgentMessage, NotFoundError, RemoteHandlerError
from mas.testing import TestPKI


class Question(msgspec.Struct):
    text: str


class Answers(msgspec.Struct):
    answered: int = 0
    last: str | None = None
    tags: list[str] = []


class Pong(Agent[Answers]):
    def __init__(self, agent_id: str, **kwargs: Any) -> None:
        super().__init__(agent_id, **kwargs)
        self.notes: list[dict[str, Any]] = []
        self.noted = trio.Event()

    @Agent.on("question", model=Question)
    async def question(self, message: AgentMessage, payload: Question) -> None:
        await self.update_state({"answered": self.state.answered + 1, "last": payload.text})
        await message.reply("answer", {"text": payload.text.upper()})

    @Agent.on("explode")
    async def explode(self, message: AgentMessage) -> None:
        raise ValueError("the handler blew up")

    @Agent.on("note")
    async def note(self, message: AgentMessage) -> None:
        self.notes.append(message.data)
        self.noted.set()


class Ping(Agent[dict[str, Any]]):
    pass


def _agent(cls: type[Agent[Any]], agent_id: str, server: BaseServer, pki: TestPKI) -> Any:
    return cls(
        agent_id,
        server_addr=f"127.0.0.1:{server.port}",
        tls=pki.client_ssl_context(agent_id),
        rpc_timeout=5.0,
    )


async def test_agent_completes_request_send_discovery_and_state_on_a_base_server(
    pki: TestPKI,
) -> None:
    with trio.fail_after(30):
        async with open_base_server(pki, {"pong": ["echo"], "ping": []}) as server:
            pong: Pong = _agent(Pong, "pong", server, pki)
            ping: Ping = _agent(Ping, "ping", server, pki)
            async with pong, ping:
                reply = await ping.request("pong", "question", {"text": "hi"}, timeout=5)
                assert reply.data == {"text": "HI"}
                assert reply.sender_id == "pong"

                with pytest.raises(RemoteHandlerError, match="blew up"):
                    await ping.request("pong", "explode", {}, timeout=5)

                message_id = await ping.send("pong", "note", {"n": 1})
                assert message_id
                await pong.noted.wait()
                assert pong.notes == [{"n": 1}]

                with pytest.raises(NotFoundError):  # the server's refusal, as a typed error
                    await ping.send("nobody", "note", {})

                [found] = await ping.discover(capabilities=["echo"])
                assert (found.agent_id, found.status) == ("pong", "ACTIVE")

                assert pong.state == Answers(answered=1, last="hi")
                await pong.update_state({"tags": ["a", "b"], "last": None})
                await pong.refresh_state()
                assert pong.state == Answers(answered=1, last=None, tags=["a", "b"])
                await pong.reset_state()
                assert pong.state == Answers()

                def bump(state: Answers) -> None:
                    state.answered += 1

                for _ in range(2):  # no versions on this server: each edit reads afresh
                    await pong.edit_state(bump)
                assert pong.state == Answers(answered=2)
                assert server.state["pong"]["answered"] == "2"
                await ping.update_state({"k": [1, {"x": None}]})
            assert server.state["ping"] == {"k": '[1,{"x":null}]'}

    # Only the base protocol was spoken: no stream frame the server ignored, one ack each.
    assert not server.frames_ignored, server.frames_ignored
    assert server.unary_calls["Request"] == 2
    assert server.unary_calls["Reply"] == 2
    assert server.unary_calls["Send"] == 2
    assert len(server.acked) >= 5  # two requests, two replies, a note: each acked on its own


class Slow(Agent[dict[str, Any]]):
    """Holds its one handler slot until ``release`` is set."""

    def __init__(self, agent_id: str, **kwargs: Any) -> None:
        super().__init__(agent_id, max_concurrency=1, prefetch=2, **kwargs)
        self.release = trio.Event()
        self.handled: list[int] = []
        self.changed = trio.Event()

    @Agent.on("note")
    async def note(self, message: AgentMessage) -> None:
        await self.release.wait()
        self.handled.append(message.data["n"])
        self.changed.set()
        self.changed = trio.Event()


async def test_deliveries_past_the_inbox_are_given_back_and_the_rest_handled_in_order(
    pki: TestPKI,
) -> None:
    """This server keeps no window: it delivers all ten at once to an agent whose inbox
    holds two windows of 2. What does not fit is nacked (retryable), never waited on."""
    with trio.fail_after(30):
        async with open_base_server(pki, {"slow": [], "ping": []}) as server:
            slow: Slow = _agent(Slow, "slow", server, pki)
            ping: Ping = _agent(Ping, "ping", server, pki)
            async with slow, ping:
                for n in range(10):
                    await ping.send("slow", "note", {"n": n})
                while len(server.nacked) < 4:  # noqa: ASYNC110 - the stand-in's list, polled
                    await trio.sleep(0.01)
                slow.release.set()
                while len(slow.handled) + len(server.nacked) < 10:
                    await slow.changed.wait()
                assert slow.handled == sorted(slow.handled)  # in delivery order
                assert len(slow.handled) == 6  # one running, one in hand, four in the inbox
                assert slow.handled == list(range(6))
                assert len(server.nacked) == 4
