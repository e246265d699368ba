"""Errors the SDK must not hide: bugs crash, the fallback is a handler, replies are typed."""

from __future__ import annotations

import logging
from typing import Any

import msgspec
import pytest
import trio
import trio.testing

from mas import Agent, AgentMessage, RemoteHandlerError, ReplyValidationError
from mas.agent.connector import Connector
from mas.testing import TestPKI, make_config, open_test_server

BOTH_WAYS = [{"type": "allow_bidirectional", "agents": ["ping", "pong"]}]


class Count(msgspec.Struct):
    count: int
    label: str = ""


class Pong(Agent[dict[str, Any]]):
    @Agent.on("count")
    async def count(self, message: AgentMessage) -> None:
        await message.reply("counted", {"count": message.data["n"], "label": "ok"})

    @Agent.on("miscount")
    async def miscount(self, message: AgentMessage) -> None:
        await message.reply("counted", {"count": "three"})


class Plain(Agent[dict[str, Any]]):
    pass


def _agent(cls: type[Agent[Any]], agent_id: str, port: int, pki: TestPKI, **kw: Any) -> Any:
    tls = pki.client_ssl_context(agent_id)
    return cls(agent_id, server_addr=f"127.0.0.1:{port}", tls=tls, **kw)


async def test_a_bug_in_the_connection_task_ends_the_agent_with_its_traceback(
    pki: TestPKI, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def buggy_heartbeat(self: Connector, live: Any) -> None:
        raise AttributeError("'NoneType' object has no attribute 'last_write'")

    monkeypatch.setattr(Connector, "_heartbeat", buggy_heartbeat)
    with trio.fail_after(20):
        async with open_test_server(make_config(["ping"]), pki) as server:
            assert server.address is not None
            agent = _agent(Plain, "ping", server.address.port, pki)
            with pytest.raises(AttributeError, match="last_write") as raised:
                await agent.run()
    assert any(frame.name == "buggy_heartbeat" for frame in raised.traceback)
    assert "reconnecting" not in caplog.text  # not hidden behind a retry loop


async def test_the_default_fallback_is_a_handler_under_handler_timeout(
    pki: TestPKI, monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    async def stuck(self: Agent[Any], message: AgentMessage) -> None:
        await trio.sleep_forever()

    monkeypatch.setattr(Agent, "on_message", stuck)  # still "the default" for Plain
    async with open_test_server(make_config(["ping", "pong"], BOTH_WAYS), pki) as server:
        assert server.address is not None
        port = server.address.port
        async with (
            _agent(Plain, "ping", port, pki) as ping,
            _agent(Plain, "pong", port, pki, handler_timeout=3) as _pong,
        ):
            started = trio.current_time()
            with pytest.raises(RemoteHandlerError, match="did not finish within 3s"):
                await ping.request("pong", "anything", {}, timeout=30)
            assert trio.current_time() - started < 5


async def test_the_default_fallback_raising_is_reported_like_a_handler_error(
    pki: TestPKI,
    monkeypatch: pytest.MonkeyPatch,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken(self: Agent[Any], message: AgentMessage) -> None:
        raise KeyError("fallback bug")

    monkeypatch.setattr(Agent, "on_message", broken)
    caplog.set_level(logging.ERROR, logger="mas.agent")
    async with open_test_server(make_config(["ping", "pong"], BOTH_WAYS), pki) as server:
        assert server.address is not None
        port = server.address.port
        async with _agent(Plain, "ping", port, pki) as ping, _agent(Plain, "pong", port, pki):
            with pytest.raises(RemoteHandlerError, match="fallback bug"):
                await ping.request("pong", "anything", {}, timeout=30)
            # The agent survived the fallback's error: it still answers.
            with pytest.raises(RemoteHandlerError, match="fallback bug"):
                await ping.request("pong", "anything", {}, timeout=30)
    assert "raised" in caplog.text


async def test_request_with_a_model_returns_the_typed_reply(
    pki: TestPKI, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_test_server(make_config(["ping", "pong"], BOTH_WAYS), pki) as server:
        assert server.address is not None
        port = server.address.port
        async with _agent(Plain, "ping", port, pki) as ping, _agent(Pong, "pong", port, pki):
            reply = await ping.request("pong", "count", {"n": 3}, timeout=30, model=Count)
            assert reply == Count(count=3, label="ok")
            with pytest.raises(ReplyValidationError, match=r"\$\.count") as misfit:
                await ping.request("pong", "miscount", {}, timeout=30, model=Count)
            assert "Count" in str(misfit.value)
            assert misfit.value.reply.data == {"count": "three"}


async def test_rate_limit_refusal_names_the_setting_and_is_logged_once(
    pki: TestPKI, caplog: pytest.LogCaptureFixture
) -> None:
    from mas import RateLimitedError

    config = make_config(
        ["ping", "pong"], BOTH_WAYS, gateway={"rate_limit": {"per_minute": 2, "per_hour": 50}}
    )
    caplog.set_level(logging.WARNING, logger="mas.gateway")
    with trio.fail_after(20):
        async with open_test_server(config, pki) as server:
            assert server.address is not None
            port = server.address.port
            async with _agent(Plain, "ping", port, pki) as ping, _agent(Plain, "pong", port, pki):
                await ping.send("pong", "note", {})
                await ping.send("pong", "note", {})
                for _ in range(3):
                    with pytest.raises(RateLimitedError) as refused:
                        await ping.send("pong", "note", {})
    assert refused.value.reason == "rate_limited"
    assert "gateway.rate_limit.per_minute" in str(refused.value)
    warnings = [r for r in caplog.records if r.name == "mas.gateway"]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    assert "'ping'" in warnings[0].getMessage()
    assert "gateway.rate_limit" in warnings[0].getMessage()
