"""``mas agent AGENT_ID``: the instances of one agent in their own process.

The process holds only that agent's key. It connects to the server named by
``--server HOST:PORT`` or by ``server_listen_addr`` (a wildcard bind address is
dialled on loopback), needs real TLS files (a development PKI made by another
process cannot be shared: run ``python -m mas certs`` first), and ends when a
signal asks it to, or when every instance has stopped by itself.
"""

from __future__ import annotations

import functools
import logging

import trio

from ..agent import TLSFiles
from ..config import AgentSpec, LoadedConfig, split_host_port
from ..errors import ConfigError
from .hosting import AgentHost, watch_signals
from .preflight import preflight
from .tree import connect_host, format_addr

log = logging.getLogger("mas.runtime")


class AgentProcess:
    """Runs the instances of one configured agent against a (possibly remote) server."""

    def __init__(
        self,
        loaded: LoadedConfig,
        agent_id: str,
        *,
        server: str | None = None,
        handle_signals: bool = True,
    ) -> None:
        config = loaded.config
        spec = config.agent(agent_id)
        if spec is None:
            listed = ", ".join(sorted(config.agent_ids)) or "none"
            raise ConfigError(
                f"agent {agent_id!r} is not listed under `agents:` in {loaded.path} "
                f"(listed: {listed})"
            )
        if not spec.class_path:
            raise ConfigError(f"agent {agent_id!r} has no class_path in {loaded.path}")
        if not (config.tls_ca_path and spec.tls_cert_path and spec.tls_key_path):
            raise ConfigError(
                f"`mas agent` needs real TLS files: set tls_ca_path and the tls_cert_path/"
                f"tls_key_path of agent {agent_id!r} in {loaded.path} "
                "(`python -m mas certs` writes a development set)"
            )
        self.loaded = loaded
        self.spec = spec
        self.server_addr = self._server_addr(server)
        self.handle_signals = handle_signals
        self._stop_requested = trio.Event()
        self.stopped_at_once = False  # a second stop signal cut the graceful stop short

    def _stop_at_once(self, root: trio.CancelScope) -> None:
        self.stopped_at_once = True
        root.cancel()

    def _server_addr(self, server: str | None) -> str:
        text = server or self.loaded.config.server_listen_addr
        try:
            host, port = split_host_port(text)
        except ValueError as exc:
            raise ConfigError(f"--server: {exc}") from exc
        if port == 0:
            raise ConfigError(
                f"server_listen_addr {text!r} has port 0 (any free port), so the server's port "
                "is not known here: pass --server HOST:PORT"
            )
        return format_addr(connect_host(host), port)

    def request_stop(self) -> None:
        """Begin a graceful stop of this process's instances."""
        self._stop_requested.set()

    def _tls_for(self, spec: AgentSpec) -> TLSFiles:
        config = self.loaded.config
        assert config.tls_ca_path and spec.tls_cert_path and spec.tls_key_path
        return TLSFiles(
            ca_path=config.tls_ca_path, cert_path=spec.tls_cert_path, key_path=spec.tls_key_path
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the instances until a stop is requested or all of them stopped."""
        config = self.loaded.config
        report = preflight(self.loaded, server=False, agents=[self.spec])
        for warning in report.warnings:
            log.warning("%s", warning)
        report.raise_errors()
        host = AgentHost(
            [self.spec],
            config.agents,
            self.loaded.base_dir,
            tls_for=self._tls_for,
            runtime_stop=self.request_stop,
            shutdown_grace=config.limits.shutdown_grace,
        )
        async with trio.open_nursery() as root:
            if self.handle_signals:
                await root.start(
                    functools.partial(
                        watch_signals,
                        stop_requested=self._stop_requested,
                        force_stop=functools.partial(self._stop_at_once, root.cancel_scope),
                    )
                )
            log.info(
                "running %d instance(s) of %s against %s",
                self.spec.instances,
                self.spec.agent_id,
                self.server_addr,
            )
            async with trio.open_nursery() as agents:
                await agents.start(
                    functools.partial(
                        host.run, self.server_addr, self._stop_requested, stop_when_done=True
                    )
                )
                task_status.started()
            # The instances are drained; only the signal watcher is left.
            root.cancel_scope.cancel()
