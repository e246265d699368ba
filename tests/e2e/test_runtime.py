"""The runtime in-process: nursery tree, supervision, graceful stop, reload."""

from __future__ import annotations

import importlib
import itertools
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from mas.config import load_config
from mas.runtime import AgentCrashLoopError, Runtime

AGENTS = """
import trio
from mas import Agent, AgentMessage

FINISHED = []
STARTS = []


class Worker(Agent[dict]):
    @Agent.on("work")
    async def work(self, message: AgentMessage) -> None:
        await trio.sleep(3)
        FINISHED.append(message.data["n"])


class Starter(Agent[dict]):
    async def on_start(self) -> None:
        await self.send("worker", "work", {"n": 1})
        await trio.sleep(1)  # the worker is now in its handler
        self.stop_runtime()


class Crasher(Agent[dict]):
    async def on_start(self) -> None:
        STARTS.append(trio.current_time())
        raise RuntimeError("broken on purpose")
"""


def _project(tmp_path: Path, config: str) -> tuple[Path, str]:
    module = f"rt_agents_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(AGENTS)
    (tmp_path / "mas.yaml").write_text(textwrap.dedent(config).replace("MODULE", module))
    return tmp_path / "mas.yaml", module


def _module(name: str) -> Any:
    return importlib.import_module(name)


async def test_graceful_stop_drains_in_flight_handlers(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    path, module = _project(
        tmp_path,
        """
        server_listen_addr: 127.0.0.1:0
        store: {backend: memory}
        permissions:
          - {type: allow, sender: starter, targets: [worker]}
        agents:
          - {agent_id: worker, class_path: "MODULE:Worker"}
          - {agent_id: starter, class_path: "MODULE:Starter"}
        """,
    )
    runtime = Runtime(load_config(path, env={}), handle_signals=False)
    await runtime.run()
    assert _module(module).FINISHED == [1]


async def test_crash_looping_agent_is_restarted_then_given_up(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    path, module = _project(
        tmp_path,
        """
        server_listen_addr: 127.0.0.1:0
        store: {backend: memory}
        agents:
          - agent_id: crasher
            class_path: "MODULE:Crasher"
            restart: {max_restarts: 3, window: 60, backoff_initial: 1, backoff_max: 4}
        """,
    )
    runtime = Runtime(load_config(path, env={}), handle_signals=False)
    with pytest.RaisesGroup(
        pytest.RaisesExc(AgentCrashLoopError, match="crasher"), flatten_subgroups=True
    ):
        await runtime.run()
    starts = _module(module).STARTS
    assert len(starts) == 4  # the first start and three restarts
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert all(0.5 <= gap <= 4.5 for gap in gaps)  # jittered, doubling, capped


async def test_reload_revokes_a_removed_agent(tmp_path: Path) -> None:
    path, _ = _project(
        tmp_path,
        """
        server_listen_addr: 127.0.0.1:0
        store: {backend: memory}
        agents:
          - {agent_id: a}
          - {agent_id: b}
        """,
    )
    runtime = Runtime(load_config(path, env={}), serve_only=True, handle_signals=False)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(runtime.run)
            assert runtime.server is not None
            assert runtime.server.config.agent_ids == {"a", "b"}
            path.write_text(
                "server_listen_addr: 127.0.0.1:0\nstore: {backend: memory}\n"
                "agents:\n  - {agent_id: a}\n"
            )
            runtime.reload()
            assert runtime.server.config.agent_ids == {"a"}
            path.write_text("agents: [{agent_id: a, instances: 0}]\n")
            runtime.reload()  # invalid: logged, the running config stays
            assert runtime.server.config.agent_ids == {"a"}
            runtime.request_stop()


def teardown_module() -> None:
    for name in [m for m in sys.modules if m.startswith("rt_agents_")]:
        del sys.modules[name]
