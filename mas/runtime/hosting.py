"""Hosting agent instances in a process: class loading, construction, supervised runs, signals.

Used by ``mas run`` (server and agents in one process) and ``mas agent`` (the
instances of one agent in their own process). ``AgentHost.run`` starts every
instance under an ``AgentSupervisor`` and, once a stop is requested, drains
them: running handlers get ``shutdown_grace`` seconds, then the rest is
cancelled. ``watch_signals`` turns SIGINT/SIGTERM into a graceful stop (a second
one stops at once) and SIGHUP into a reload.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

import trio

from ..agent import Agent, TLSFiles
from ..config import AgentSpec
from ..errors import AgentLoadError
from .supervisor import AgentSupervisor

log = logging.getLogger("mas.runtime")

STOP_MARGIN: Final = 5.0  # seconds past the drain grace before agents are cancelled


def load_agent_class(spec: AgentSpec, base_dir: Path, index: int) -> type[Agent[Any]]:
    """Import ``spec.class_path`` (``module:Name``); the config's directory is searched last.

    The directory is appended to ``sys.path``, never put first, so a file there named like
    an installed package (``yaml.py``) cannot shadow it. Errors name the file imported.
    """
    assert spec.class_path is not None
    where = f"$.agents[{index}].class_path"
    module_name, _, attr = spec.class_path.partition(":")
    if str(base_dir) not in sys.path:
        sys.path.append(str(base_dir))
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise AgentLoadError(
                f"{where}: cannot import module {module_name!r} for agent {spec.agent_id!r} "
                f"({exc}); modules are searched on sys.path, then in {base_dir}"
            ) from exc
        raise AgentLoadError(
            f"{where}: importing {_origin(module_name)} for agent {spec.agent_id!r} failed: "
            f"{exc} (is that package installed in this environment?)"
        ) from exc
    except Exception as exc:
        raise AgentLoadError(
            f"{where}: importing {_origin(module_name)} for agent {spec.agent_id!r} failed: "
            f"{type(exc).__name__}: {exc}{_raised_at(exc)}"
        ) from exc
    cls = getattr(module, attr, None)
    if cls is None:
        raise AgentLoadError(
            f"{where}: module {module_name!r} ({getattr(module, '__file__', None) or 'built-in'})"
            f" has no attribute {attr!r}"
        )
    if not (isinstance(cls, type) and issubclass(cls, Agent)):
        raise AgentLoadError(f"{where}: {spec.class_path!r} is not a subclass of mas.Agent")
    return cls


def _origin(module_name: str) -> str:
    """``module 'name' (/path/to/name.py)``: which file an import of ``module_name`` runs."""
    try:
        found = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        found = None
    origin = found.origin if found is not None else None
    return f"module {module_name!r} ({origin})" if origin else f"module {module_name!r}"


def _raised_at(exc: BaseException) -> str:
    """`` at file:line``: the innermost frame of ``exc``'s traceback."""
    tb = exc.__traceback__
    if tb is None:
        return ""
    while tb.tb_next is not None:
        tb = tb.tb_next
    return f" (at {tb.tb_frame.f_code.co_filename}:{tb.tb_lineno})"


def _init_location(cls: type) -> str:
    """Where ``cls.__init__`` is defined, as ``file:line``, for error messages."""
    init = next((vars(k)["__init__"] for k in cls.__mro__ if "__init__" in vars(k)), None)
    code = getattr(init, "__code__", None)
    if code is None:
        return cls.__qualname__
    return f"{code.co_filename}:{code.co_firstlineno}"


class AgentHost:
    """Builds and supervises the instances of some agents against one server address."""

    def __init__(
        self,
        specs: Sequence[AgentSpec],
        all_specs: Sequence[AgentSpec],
        base_dir: Path,
        *,
        tls_for: Callable[[AgentSpec], TLSFiles],
        runtime_stop: Callable[[], None],
        shutdown_grace: float,
    ) -> None:
        """Load every class now, so a bad ``class_path`` fails before anything starts.

        ``all_specs`` is the config's whole agent list (for error paths).
        """
        self.specs = [spec for spec in specs if spec.class_path]
        index_of = {spec.agent_id: index for index, spec in enumerate(all_specs)}
        self._classes = {
            spec.agent_id: load_agent_class(spec, base_dir, index_of[spec.agent_id])
            for spec in self.specs
        }
        self._tls_for = tls_for
        self._runtime_stop = runtime_stop
        self._shutdown_grace = shutdown_grace

    def make(self, spec: AgentSpec, server_addr: str) -> Agent[Any]:
        """Construct an instance, injecting ``server_addr``, ``tls`` and ``runtime_stop``."""
        cls = self._classes[spec.agent_id]
        try:
            return cls(
                spec.agent_id,
                server_addr=server_addr,
                tls=self._tls_for(spec),
                runtime_stop=self._runtime_stop,
                shutdown_grace=self._shutdown_grace,
                **spec.init_kwargs,
            )
        except TypeError as exc:
            raise AgentLoadError(
                f"cannot construct agent {spec.agent_id!r} ({spec.class_path}): {exc}; "
                "check init_kwargs, and that __init__ accepts **kwargs and passes them to super()"
            ) from exc
        except Exception as exc:  # a constructor that fails once will fail on every restart
            raise AgentLoadError(
                f"constructing agent {spec.agent_id!r} ({spec.class_path}) failed: "
                f"{type(exc).__name__}: {exc}; fix its __init__ or its init_kwargs "
                f"({_init_location(self._classes[spec.agent_id])})"
            ) from exc

    async def run(
        self,
        server_addr: str,
        stop_requested: trio.Event,
        *,
        stop_when_done: bool = False,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run every instance until ``stop_requested`` is set, then drain them.

        With ``stop_when_done``, instances that all stopped by themselves end the run too.
        """
        supervisor = AgentSupervisor(
            self.specs,
            lambda spec, _index: self.make(spec, server_addr),
            shutdown_grace=self._shutdown_grace,
        )

        async def supervise(*, task_status: trio.TaskStatus[None]) -> None:
            await supervisor.run(task_status=task_status)
            if stop_when_done:
                stop_requested.set()

        async with trio.open_nursery() as agents:
            await agents.start(supervise)
            task_status.started()
            await stop_requested.wait()
            log.debug("stopping: draining agents (up to %.0f s)", self._shutdown_grace)
            await supervisor.stop()
            agents.cancel_scope.deadline = trio.current_time() + self._shutdown_grace + STOP_MARGIN


async def watch_signals(
    *,
    stop_requested: trio.Event,
    force_stop: Callable[[], None],
    reload: Callable[[], None] | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """SIGINT/SIGTERM: graceful stop, the second one ``force_stop``; SIGHUP: ``reload``."""
    signals = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]
    with trio.open_signal_receiver(*signals) as received:
        task_status.started()
        async for signum in received:
            if signum == signal.SIGHUP:
                if reload is not None:
                    reload()
            elif stop_requested.is_set():
                log.warning("second stop signal: stopping now")
                force_stop()
            else:
                log.info(
                    "received %s: stopping gracefully (again to stop now)",
                    signal.Signals(signum).name,
                )
                stop_requested.set()
