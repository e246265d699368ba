"""The agent SDK end to end: real server, real loopback mTLS, agents as users write them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import msgspec
import pytest
import trio
import trio.testing

from mas import (
    Agent,
    AgentMessage,
    PermissionDeniedError,
    RemoteHandlerError,
    RemoteValidationError,
    RequestTimeoutError,
    UnauthenticatedError,
)
from mas.server import MasServer
from mas.testing import TestPKI, make_config, open_test_server


class Greeting(msgspec.Struct):
    name: str


class CounterState(msgspec.Struct):
    handled: int = 0


class Responder(Agent[CounterState]):
    """Answers "greet" requests, records sends, fails on demand."""

    def __init__(self, agent_id: str, **kwargs: Any) -> None:
        super().__init__(agent_id, **kwargs)
        self.received: list[dict[str, Any]] = []
        self.got_message = trio.Event()

    @Agent.on("greet", model=Greeting)
    async def greet(self, message: AgentMessage, payload: Greeting) -> None:
        await self.update_state({"handled": self.state.handled + 1})
        await message.reply("greeting", {"text": f"hello {payload.name}", "by": self.instance_id})

    @Agent.on("explode")
    async def explode(self, message: AgentMessage) -> None:
        raise ValueError("the handler blew up")

    @Agent.on("note")
    async def note(self, message: AgentMessage) -> None:
        self.received.append(message.data)
        self.got_message.set()


class Plain(Agent[dict[str, Any]]):
    """An agent with no handlers of its own."""


@asynccontextmanager
async def running(
    server: MasServer, pki: TestPKI, *agents: tuple[type[Agent[Any]], str]
) -> AsyncIterator[list[Any]]:
    """Run agents (class, id) against the server; yields them once all are ready."""
    assert server.address is not None
    port = server.address.port
    async with AsyncExitStack() as stack:
        started = []
        for cls, agent_id in agents:
            agent = cls(
                agent_id, server_addr=f"127.0.0.1:{port}", tls=pki.client_ssl_context(agent_id)
            )
            started.append(await stack.enter_async_context(agent))
        yield started


def _config(
    agents: Sequence[str | Mapping[str, Any]],
    permissions: Sequence[Mapping[str, Any]] = (),
    **kw: Any,
) -> Any:
    return make_config(agents, permissions, **kw)


BOTH_WAYS = [{"type": "allow_bidirectional", "agents": ["ping", "pong"]}]


async def test_request_reply_with_typed_handler_and_state(pki: TestPKI) -> None:
    with trio.fail_after(20):
        async with open_test_server(_config(["ping", "pong"], BOTH_WAYS), pki) as server:
            async with running(server, pki, (Plain, "ping"), (Responder, "pong")) as (ping, pong):
                for n in range(3):
                    reply = await ping.request("pong", "greet", {"name": f"p{n}"}, timeout=5)
                    assert reply.data["text"] == f"hello p{n}"
                    assert reply.sender_id == "pong"
                assert pong.state.handled == 3
                await pong.refresh_state()
                assert pong.state == CounterState(handled=3)


async def test_send_reaches_the_handler(pki: TestPKI) -> None:
    with trio.fail_after(20):
        async with open_test_server(_config(["ping", "pong"], BOTH_WAYS), pki) as server:
            async with running(server, pki, (Plain, "ping"), (Responder, "pong")) as (ping, pong):
                message_id = await ping.send(
                    "pong", "note", {"n": 1, "nested": {"ok": [True, None]}}
                )
                assert message_id
                await pong.got_message.wait()
                assert pong.received == [{"n": 1, "nested": {"ok": [True, None]}}]


async def test_request_to_an_absent_agent_times_out(
    pki: TestPKI, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_test_server(_config(["ping", "pong"], BOTH_WAYS), pki) as server:
        async with running(server, pki, (Plain, "ping")) as (ping,):
            started = trio.current_time()
            with pytest.raises(RequestTimeoutError):
                await ping.request("pong", "greet", {"name": "x"}, timeout=7)
            assert 7 <= trio.current_time() - started < 8
            with pytest.raises(ValueError, match="timeout"):
                await ping.request("pong", "greet", {"name": "x"}, timeout=0)


async def test_handler_error_reaches_the_requester_at_once(
    pki: TestPKI, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_test_server(_config(["ping", "pong"], BOTH_WAYS), pki) as server:
        async with running(server, pki, (Plain, "ping"), (Responder, "pong")) as (ping, _):
            started = trio.current_time()
            with pytest.raises(RemoteHandlerError, match="the handler blew up"):
                await ping.request("pong", "explode", {}, timeout=30)
            assert trio.current_time() - started < 1  # not a timeout


async def test_payload_that_fails_the_model_gives_a_validation_error(
    pki: TestPKI, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_test_server(_config(["ping", "pong"], BOTH_WAYS), pki) as server:
        async with running(server, pki, (Plain, "ping"), (Responder, "pong")) as (ping, pong):
            with pytest.raises(RemoteValidationError, match="name"):
                await ping.request("pong", "greet", {"nom": "x"}, timeout=30)
            assert pong.state.handled == 0


async def test_deny_by_default_refuses_a_send(pki: TestPKI) -> None:
    with trio.fail_after(20):
        async with open_test_server(_config(["ping", "pong"]), pki) as server:
            async with running(server, pki, (Plain, "ping")) as (ping,):
                with pytest.raises(PermissionDeniedError) as refused:
                    await ping.send("pong", "note", {})
                assert refused.value.reason == "not_authorized"


PERMISSION_CASES = [
    ({"type": "allow", "sender": "a", "targets": ["b"]}, {("a", "b")}),
    ({"type": "allow_bidirectional", "agents": ["a", "b"]}, {("a", "b"), ("b", "a")}),
    (
        {"type": "allow_network", "agents": ["a", "b", "c"]},
        {(s, t) for s in "abc" for t in "abc" if s != t},
    ),
    (
        {"type": "allow_network", "agents": ["a", "b", "c"], "bidirectional": False},
        {("a", "b"), ("a", "c"), ("b", "c")},
    ),
    ({"type": "allow_broadcast", "sender": "c", "receivers": ["a", "b"]}, {("c", "a"), ("c", "b")}),
    ({"type": "allow_wildcard", "agent_id": "b"}, {("b", "a"), ("b", "c")}),
]


@pytest.mark.parametrize(("rule", "allowed"), PERMISSION_CASES)
async def test_each_permission_type_allows_exactly_its_pairs(
    pki: TestPKI, rule: dict[str, Any], allowed: set[tuple[str, str]]
) -> None:
    with trio.fail_after(30):
        async with open_test_server(_config(["a", "b", "c"], [rule]), pki) as server:
            async with running(server, pki, (Plain, "a"), (Plain, "b"), (Plain, "c")) as agents:
                by_id = {agent.agent_id: agent for agent in agents}
                seen = set()
                for sender in "abc":
                    for target in "abc":
                        if sender == target:
                            continue
                        try:
                            await by_id[sender].send(target, "note", {})
                        except PermissionDeniedError:
                            continue
                        seen.add((sender, target))
                assert seen == allowed


async def test_instances_share_work_and_replies_reach_the_requesting_instance(pki: TestPKI) -> None:
    config = _config(
        ["ping", {"agent_id": "pong", "instances": 2}], BOTH_WAYS, limits={"prefetch": 1}
    )
    with trio.fail_after(30):
        async with open_test_server(config, pki) as server:
            async with running(
                server,
                pki,
                (Plain, "ping"),
                (Plain, "ping"),
                (Responder, "pong"),
                (Responder, "pong"),
            ) as (ping1, ping2, pong1, pong2):
                answered_by: set[str] = set()

                async def ask(requester: Agent[Any], n: int) -> None:
                    reply = await requester.request("pong", "greet", {"name": str(n)}, timeout=10)
                    assert reply.data["text"] == f"hello {n}"
                    assert reply.meta.reply_to_instance_id == requester.instance_id
                    answered_by.add(reply.data["by"])

                async with trio.open_nursery() as nursery:
                    for n in range(20):
                        nursery.start_soon(ask, ping1 if n % 2 else ping2, n)
                assert answered_by == {pong1.instance_id, pong2.instance_id}


async def test_messages_for_an_offline_agent_are_delivered_when_it_connects(pki: TestPKI) -> None:
    with trio.fail_after(20):
        async with open_test_server(_config(["ping", "pong"], BOTH_WAYS), pki) as server:
            async with running(server, pki, (Plain, "ping")) as (ping,):
                await ping.send("pong", "note", {"n": 1})
                await ping.send("pong", "note", {"n": 2})
                async with running(server, pki, (Responder, "pong")) as (pong,):
                    while len(pong.received) < 2:
                        await pong.got_message.wait()
                        pong.got_message = trio.Event()
                    assert pong.received == [{"n": 1}, {"n": 2}]


async def test_state_round_trips_exactly(pki: TestPKI) -> None:
    value = {
        "none": None,
        "yes": True,
        "no": False,
        "list": [1, [2, None], {"k": "v"}],
        "obj": {"a": {"b": []}},
    }
    with trio.fail_after(20):
        async with open_test_server(_config(["ping"]), pki) as server:
            async with running(server, pki, (Plain, "ping")) as (first,):
                await first.update_state(value)
                await first.update_state({"yes": False})
            async with running(server, pki, (Plain, "ping")) as (second,):
                assert second.state == {**value, "yes": False}
                await second.reset_state()
                assert second.state == {}
                await second.refresh_state()
                assert second.state == {}


async def test_discovery_filters_by_capability_and_reports_status(pki: TestPKI) -> None:
    agents = [
        {"agent_id": "ping", "capabilities": ["sender"]},
        {"agent_id": "pong", "capabilities": ["responder", "doctor"], "metadata": {"room": 7}},
        {"agent_id": "idle", "capabilities": ["responder"]},
    ]
    reach = [{"type": "allow", "sender": "ping", "targets": ["pong", "idle"]}]
    with trio.fail_after(20):
        async with open_test_server(_config(agents, reach), pki) as server:
            async with running(server, pki, (Plain, "ping"), (Responder, "pong")) as (ping, _):
                found = await ping.discover(capabilities=["responder"])
                by_id = {record.agent_id: record for record in found}
                assert set(by_id) == {"pong", "idle"}
                assert (by_id["pong"].status, by_id["pong"].instance_count) == ("ACTIVE", 1)
                assert by_id["pong"].metadata == {"room": 7}
                assert by_id["idle"].status == "INACTIVE"
                assert {r.agent_id for r in await ping.discover()} == {"pong", "idle"}


async def test_discovery_shows_only_the_agents_the_caller_may_send_to(pki: TestPKI) -> None:
    agents = [
        "ping",
        {"agent_id": "pong", "capabilities": ["responder"], "metadata": {"room": 7}},
        {"agent_id": "vault", "capabilities": ["responder"], "metadata": {"secret": "x"}},
        "loner",
        "boss",
    ]
    rules = [
        {"type": "allow", "sender": "ping", "targets": ["pong", "vault"]},
        {"type": "deny", "sender": "ping", "targets": ["vault"]},
        {"type": "allow_wildcard", "agent_id": "boss"},
    ]
    with trio.fail_after(20):
        async with open_test_server(_config(agents, rules), pki) as server:
            started = ((Plain, "ping"), (Responder, "vault"), (Plain, "loner"), (Plain, "boss"))
            async with running(server, pki, *started) as (ping, _vault, loner, boss):
                assert [r.agent_id for r in await ping.discover()] == ["pong"]
                assert await loner.discover() == []  # allowlisted, denied all traffic
                assert await loner.discover(capabilities=["responder"]) == []
                seen = {r.agent_id: r for r in await boss.discover(capabilities=["responder"])}
                assert set(seen) == {"pong", "vault"}
                assert (seen["vault"].status, seen["pong"].status) == ("ACTIVE", "INACTIVE")


async def test_agent_not_in_the_allowlist_cannot_run(pki: TestPKI) -> None:
    with trio.fail_after(20):
        async with open_test_server(_config(["ping"]), pki) as server:
            assert server.address is not None
            stranger = Plain(
                "stranger",
                server_addr=f"127.0.0.1:{server.address.port}",
                tls=pki.client_ssl_context("stranger"),
            )
            with pytest.raises(UnauthenticatedError) as refused:
                await stranger.run()
            assert refused.value.reason == "not_allowlisted"


class Slow(Agent[dict[str, Any]]):
    def __init__(self, agent_id: str, **kwargs: Any) -> None:
        super().__init__(agent_id, **kwargs)
        self.started = trio.Event()
        self.finished: list[int] = []

    @Agent.on("work")
    async def work(self, message: AgentMessage) -> None:
        self.started.set()
        await trio.sleep(3)
        self.finished.append(message.data["n"])


async def test_graceful_stop_finishes_in_flight_handlers(
    pki: TestPKI, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_test_server(
        _config(["ping", "slow"], [{"type": "allow", "sender": "ping", "targets": ["slow"]}]), pki
    ) as server:
        assert server.address is not None
        async with running(server, pki, (Plain, "ping")) as (ping,):
            slow = Slow(
                "slow",
                server_addr=f"127.0.0.1:{server.address.port}",
                tls=pki.client_ssl_context("slow"),
                shutdown_grace=10,
            )
            async with trio.open_nursery() as nursery:
                await nursery.start(slow.run)
                await ping.send("slow", "work", {"n": 1})
                await slow.started.wait()
                slow.stop()  # run() returns once the handler finished
            assert slow.finished == [1]
            # The handled message was acked: nothing is redelivered to a new instance.
            async with running(server, pki, (Slow, "slow")) as (again,):
                with trio.move_on_after(30):
                    await again.started.wait()
                assert again.finished == []


class Looper(Agent[dict[str, Any]]):
    """An ``on_start`` that loops until it is cancelled, as a producer agent does."""

    def __init__(self, agent_id: str, **kwargs: Any) -> None:
        super().__init__(agent_id, **kwargs)
        self.looping = trio.Event()
        self.ticks = 0
        self.stopped = False

    async def on_start(self) -> None:
        self.looping.set()
        while True:  # a producer: work, pause, until cancelled
            self.ticks += 1
            await trio.sleep(0.01)

    async def on_stop(self) -> None:
        self.stopped = True


async def test_a_stop_during_on_start_cuts_it_after_the_grace(
    pki: TestPKI, autojump_clock: trio.testing.MockClock
) -> None:
    """``stop()`` bounds ``on_start`` by ``shutdown_grace``, as it bounds handlers.

    Before, the stop waited for ``on_start`` to return: an agent whose ``on_start``
    produces in a loop never stopped (under ``mas run``, SIGTERM spun for ever).
    """
    async with open_test_server(_config(["looper"], []), pki) as server:
        assert server.address is not None
        looper = Looper(
            "looper",
            server_addr=f"127.0.0.1:{server.address.port}",
            tls=pki.client_ssl_context("looper"),
            shutdown_grace=5,
        )
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(looper.run)
                await looper.looping.wait()
                stop_asked = trio.current_time()
                looper.stop()  # the nursery is left once run() returned
        stopped_after = trio.current_time() - stop_asked
        assert 5 <= stopped_after < 5 + 2 * 5  # the grace, then the bounded close
        assert looper.stopped  # on_start had begun: on_stop cleans up after it


async def test_agents_reconnect_after_the_server_restarts(
    pki: TestPKI, autojump_clock: trio.testing.MockClock
) -> None:
    from mas import ConnectionClosedError

    config = _config(["ping", "pong"], BOTH_WAYS)
    async with trio.open_nursery() as nursery:
        first_scope = trio.CancelScope()

        async def first_server(*, task_status: trio.TaskStatus[int]) -> None:
            with first_scope:
                async with open_test_server(config, pki) as server:
                    assert server.address is not None
                    task_status.started(server.address.port)
                    await trio.sleep_forever()

        port = await nursery.start(first_server)
        pinned = _config(["ping", "pong"], BOTH_WAYS, server_listen_addr=f"127.0.0.1:{port}")
        ping = Plain("ping", server_addr=f"127.0.0.1:{port}", tls=pki.client_ssl_context("ping"))
        pong = Responder(
            "pong", server_addr=f"127.0.0.1:{port}", tls=pki.client_ssl_context("pong")
        )
        async with ping, pong:
            assert (await ping.request("pong", "greet", {"name": "before"}, timeout=5)).data
            first_scope.cancel()  # the server goes away
            await trio.sleep(1)
            async with open_test_server(pinned, pki) as second:
                for _ in range(100):
                    try:
                        reply = await ping.request("pong", "greet", {"name": "after"}, timeout=5)
                        break
                    except (ConnectionClosedError, RequestTimeoutError):
                        await trio.sleep(1)
                else:
                    raise AssertionError("the agents never came back")
                assert reply.data["text"] == "hello after"
                assert second.statistics()["sessions"] == 2
