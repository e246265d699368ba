"""Runs agent instances as supervised Trio tasks, restarting crashed ones.

Each instance runs in its own task under the supervisor's nursery. An instance
whose ``run`` raises is logged with its traceback and restarted after a
jittered, doubling backoff; more than ``restart.max_restarts`` crashes within
``restart.window`` seconds is a crash loop, and the supervisor gives up on the
whole runtime with ``AgentCrashLoopError``. An instance whose ``run`` returns
(it stopped itself) is not restarted.
"""

from __future__ import annotations

import logging
import random
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import trio

from ..config import AgentSpec
from ..errors import AgentLoadError, CertificateError, MasError

if TYPE_CHECKING:
    from ..agent import Agent

log = logging.getLogger("mas.supervisor")


class AgentCrashLoopError(MasError):
    """An agent kept crashing; the runtime stops rather than run without it."""


AgentFactory = Callable[[AgentSpec, int], "Agent[object]"]


class AgentSupervisor:
    """Starts, restarts and stops the agent instances of one runtime."""

    def __init__(
        self, specs: Sequence[AgentSpec], factory: AgentFactory, *, shutdown_grace: float
    ) -> None:
        self._specs = [spec for spec in specs if spec.class_path]
        self._factory = factory
        self._shutdown_grace = shutdown_grace
        self._running: set[Agent[object]] = set()
        self._stopping = False
        self.restarts = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run every instance; readiness once each has started (or failed) once.

        Instances start concurrently: one agent's ``on_start`` may wait for
        replies from another that is listed after it.
        """
        pending = sum(spec.instances for spec in self._specs)
        all_started = trio.Event()

        def started() -> None:
            nonlocal pending
            pending -= 1
            if pending == 0:
                all_started.set()

        async with trio.open_nursery() as nursery:
            for spec in self._specs:
                for index in range(spec.instances):
                    nursery.start_soon(self._supervise, spec, index, started)
            if pending:
                await all_started.wait()
            task_status.started()

    async def stop(self) -> None:
        """Ask every instance to stop gracefully (drain handlers, ``on_stop``)."""
        self._stopping = True
        for agent in list(self._running):
            agent.stop()

    async def _supervise(self, spec: AgentSpec, index: int, started: Callable[[], None]) -> None:
        policy = spec.restart
        crashes: deque[float] = deque()
        backoff = policy.backoff_initial
        name = f"{spec.agent_id}[{index}]"
        reported = False
        while not self._stopping:
            agent = self._factory(spec, index)
            self._running.add(agent)
            try:
                async with trio.open_nursery() as nursery:
                    await nursery.start(agent.run)
                    if not reported:
                        reported = True
                        started()
                log.debug("agent %s stopped", name)
                return
            except (AgentLoadError, CertificateError):
                raise  # a bad class, init_kwargs or key file will not get better by restarting
            except MasError as exc:
                log.error("agent %s failed: %s", name, exc)
            except Exception:
                log.exception("agent %s crashed", name)
            finally:
                self._running.discard(agent)
            if not reported:
                reported = True
                started()
            if self._stopping:
                return
            now = trio.current_time()
            crashes.append(now)
            while crashes and crashes[0] < now - policy.window:
                crashes.popleft()
            if len(crashes) > policy.max_restarts:
                raise AgentCrashLoopError(
                    f"agent {name} crashed {len(crashes)} times within {policy.window:g} s; "
                    "giving up (see the tracebacks above, fix the agent, and run again)"
                )
            delay = random.uniform(backoff / 2, backoff)
            log.warning("restarting agent %s in %.2f s", name, delay)
            self.restarts += 1
            await trio.sleep(delay)
            backoff = min(backoff * 2, policy.backoff_max)
