"""What one message costs the event loop: Trio task steps per message, counted.

A Trio task step is one run of a task between two scheduler passes (``trio.abc.Instrument
.before_task_step``): every hop of a message from one task to another (a channel, an event,
a lock, a writer woken) costs one, and each costs far more CPU than the work most of them
do. Here a real server and the SDK agents run over loopback mTLS in one process, on the
memory store, and the steps are counted per request with its reply and per one-way send
(warm-up excluded), split between the server's tasks and the agents' tasks. A change that
adds a hop per message fails here rather than in a benchmark months later.
"""

from __future__ import annotations

from collections import Counter

import trio
import trio.lowlevel
from sdk_agents import Echo, Plain, Sink, settled

from mas.testing import TestPKI, make_config, open_test_server

WARMUP = 5
MESSAGES = 40
# Upper bounds, per request/reply and per one-way message once its ack is settled; the
# agents' side counts the calling task too (the test's). Measured on the memory store,
# before issue 16 and after it: a request/reply 26.1 -> 11.5 server steps (9.05 once a
# claim rides in its enqueue, `Store.route_batch`) and 26.9 -> 11.0 agent steps (12.0
# with the test's; 11.05 once an ack rides in the next frame or waits for its deadline
# without a wake-up, `ACK_DELAY`; 9.05 once a request's Result rides with its reply,
# `Hello.late_results`); a send 15.3 -> 7.0 (3.85 with acks delayed and
# batched) and 18.0 -> 7.5 (6.9). A bound leaves room for a stray pass.
MAX_SERVER_STEPS_PER_REQUEST = 10
MAX_AGENT_STEPS_PER_REQUEST = 10
MAX_SERVER_STEPS_PER_SEND = 5
MAX_AGENT_STEPS_PER_SEND = 8


class StepCounter(trio.abc.Instrument):
    """Counts task steps by side (``server``, ``agents``, ``other``: here the test's own
    task, the agents' caller) and by task name."""

    def __init__(self) -> None:
        self.sides: Counter[str] = Counter()
        self.tasks: Counter[str] = Counter()
        self._side: dict[trio.lowlevel.Task, str] = {}

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        side = self._side.get(task)
        if side is None:
            side = self._side[task] = _side_of(task)
        self.sides[side] += 1
        self.tasks[f"{side}: {task.name.rsplit('.', 1)[-1]}"] += 1

    def task_exited(self, task: trio.lowlevel.Task) -> None:
        self._side.pop(task, None)

    def snapshot(self) -> tuple[Counter[str], Counter[str]]:
        return self.sides.copy(), self.tasks.copy()


def _side_of(task: trio.lowlevel.Task) -> str:
    """Whose task this is: the nearest ancestor started from mas.server or mas.agent."""
    current: trio.lowlevel.Task | None = task
    while current is not None:
        code = getattr(current.coro, "cr_code", None)
        filename = code.co_filename if code is not None else ""
        if "/mas/server/" in filename:
            return "server"
        if "/mas/agent/" in filename:
            return "agents"
        nursery = current.parent_nursery
        current = nursery.parent_task if nursery is not None else None
    return "other"


def _per_message(
    before: tuple[Counter[str], Counter[str]], after: tuple[Counter[str], Counter[str]]
) -> tuple[dict[str, float], dict[str, float]]:
    sides = {k: v / MESSAGES for k, v in sorted((after[0] - before[0]).items())}
    tasks = {k: v / MESSAGES for k, v in (after[1] - before[1]).most_common()}
    return sides, tasks


async def test_task_steps_per_request_reply_and_per_send(pki: TestPKI) -> None:
    rules = [{"type": "allow", "sender": "asker", "targets": ["echo", "sink"]}]
    config = make_config(["asker", "echo", "sink"], rules)
    counter = StepCounter()
    with trio.fail_after(30):
        async with open_test_server(config, pki) as server:
            assert server.address is not None
            addr = f"127.0.0.1:{server.address.port}"
            echo = Echo("echo", server_addr=addr, tls=pki.client_ssl_context("echo"))
            sink = Sink("sink", server_addr=addr, tls=pki.client_ssl_context("sink"))
            asker = Plain("asker", server_addr=addr, tls=pki.client_ssl_context("asker"))
            async with echo, sink, asker:
                for i in range(WARMUP):
                    await asker.request("echo", "ping", {"i": i}, timeout=10)
                    await asker.send("sink", "note", {"i": i})
                await settled(server, 3 * WARMUP)
                trio.lowlevel.add_instrument(counter)
                try:
                    # Request/reply, one at a time.
                    start = counter.snapshot()
                    for i in range(MESSAGES):
                        reply = await asker.request("echo", "ping", {"i": i}, timeout=10)
                        assert reply.data == {"i": i}
                    await settled(server, 3 * WARMUP + 2 * MESSAGES)
                    requests = _per_message(start, counter.snapshot())
                    # One-way sends, one in flight, each waited for at the receiver.
                    start = counter.snapshot()
                    for i in range(MESSAGES):
                        await asker.send("sink", "note", {"i": i})
                        while sink.received < WARMUP + i + 1:
                            await sink.changed.wait()
                            sink.changed = trio.Event()
                    await settled(server, 3 * WARMUP + 3 * MESSAGES)
                    sends = _per_message(start, counter.snapshot())
                finally:
                    trio.lowlevel.remove_instrument(counter)
    print(f"task steps per request/reply: {requests[0]}")
    for name, steps in requests[1].items():
        print(f"    {steps:5.2f}  {name}")
    print(f"task steps per one-way send: {sends[0]}")
    for name, steps in sends[1].items():
        print(f"    {steps:5.2f}  {name}")
    assert requests[0].get("server", 0) <= MAX_SERVER_STEPS_PER_REQUEST, requests
    agent_steps = requests[0].get("agents", 0) + requests[0].get("other", 0)
    assert agent_steps <= MAX_AGENT_STEPS_PER_REQUEST, requests
    assert sends[0].get("server", 0) <= MAX_SERVER_STEPS_PER_SEND, sends
    agent_steps = sends[0].get("agents", 0) + sends[0].get("other", 0)
    assert agent_steps <= MAX_AGENT_STEPS_PER_SEND, sends
