"""The runtime's nursery tree: store, server, then agents; shutdown in reverse.

::

    Runtime.run
    ├── signals           SIGINT/SIGTERM: graceful stop, twice: stop now; SIGHUP: reload
    ├── control           ControlServer.serve: mas.yaml.sock (status, top, reload, dlq replay)
    ├── http              /metrics, /healthz, /readyz (when gateway.telemetry.prometheus.port)
    ├── server            MasServer.serve (listener, sessions, router timers)
    └── agents            AgentHost.run -> AgentSupervisor (one task per instance, restarts)

A graceful stop (first signal, or an agent calling ``stop_runtime()``) asks
every agent to stop (running handlers finish within ``limits.shutdown_grace``,
then ``on_stop``), waits for them with a deadline, ends the remaining sessions
with ``UNAVAILABLE server_shutting_down``, and cancels the rest.

The store is opened first and closed last (``mas.runtime.backend.open_store``).

When the configuration names no TLS files, a throwaway development PKI is made
in a private temporary directory (allowed only on a loopback listen address).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import tempfile
from pathlib import Path
from typing import Any, Final

import trio

from ..agent import TLSFiles
from ..config import AgentSpec, LoadedConfig, MasConfig, load_config
from ..control import socket_path
from ..control.protocol import (
    DlqListRequest,
    ListReply,
    ReloadReply,
    ReplayedMessage,
    StatusSnapshot,
)
from ..errors import ConfigError, MasError
from ..pki import server_ssl_context, write_dev_pki
from ..server import BoundAddress, MasServer
from ..server.app import restart_only_changes
from ..server.control import ControlServer, list_page
from ..server.http import HttpServer
from ..server.prometheus import Endpoints
from ..server.snapshot import StatusReader
from .backend import open_store, store_where
from .hosting import AgentHost, watch_signals
from .preflight import dev_pki_refusal, missing_agent_tls, preflight

log = logging.getLogger("mas.runtime")

_SESSION_DRAIN_TIMEOUT: Final = 2.0  # seconds for remaining sessions to close on stop


def connect_host(listen_host: str) -> str:
    """The address local agents dial for a server listening on ``listen_host``."""
    if listen_host in ("", "0.0.0.0"):  # noqa: S104 - mapping a wildcard bind, not binding
        return "127.0.0.1"
    if listen_host == "::":
        return "::1"
    return listen_host


def format_addr(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _TLSMaterial:
    """Server and agent TLS file paths: from the config, or a development PKI."""

    def __init__(self, config: MasConfig, stack: contextlib.AsyncExitStack) -> None:
        self.development = not config.tls_configured
        self._agent_files: dict[str, TLSFiles] = {}
        if self.development:
            refusal = dev_pki_refusal(config)
            if refusal is not None:
                raise refusal
            directory = Path(
                stack.enter_context(tempfile.TemporaryDirectory(prefix="mas-dev-pki-"))
            )
            paths = write_dev_pki(directory, config.agent_ids, trust_domain=config.trust_domain)
            log.warning(
                "no TLS files configured: using a throwaway development PKI in %s "
                "(loopback only; not for production)",
                directory,
            )
            self.ca_path, self.cert_path, self.key_path = (
                paths.ca_path,
                paths.server_cert_path,
                paths.server_key_path,
            )
            for agent_id, (cert, key) in paths.agents.items():
                self._agent_files[agent_id] = TLSFiles(
                    ca_path=str(paths.ca_path), cert_path=str(cert), key_path=str(key)
                )
        else:
            assert config.tls_ca_path and config.tls_server_cert_path and config.tls_server_key_path
            self.ca_path = Path(config.tls_ca_path)
            self.cert_path = Path(config.tls_server_cert_path)
            self.key_path = Path(config.tls_server_key_path)

    def agent(self, spec: AgentSpec) -> TLSFiles:
        files = self._agent_files.get(spec.agent_id)
        if files is not None:
            return files
        if not (spec.tls_cert_path and spec.tls_key_path):
            raise missing_agent_tls(spec)
        return TLSFiles(
            ca_path=str(self.ca_path), cert_path=spec.tls_cert_path, key_path=spec.tls_key_path
        )


_REFUSALS: Final = frozenset(
    {"AUTHN_DENIED", "AUTHZ_DENIED", "RATE_LIMITED", "CIRCUIT_OPEN", "DLP_BLOCKED", "INVALID"}
)  # decisions that refused a message, for the shutdown summary


def summary(stats: dict[str, Any]) -> str:
    """One line for people from ``MasServer.statistics()``: what was delivered and refused."""
    decisions: dict[str, int] = stats.get("decisions", {})
    refused = {
        name.lower(): count
        for name, count in sorted(decisions.items())
        if name in _REFUSALS and count
    }
    parts = [f"{stats.get('delivered', 0)} message(s) delivered"]
    if refused:
        parts.append("refused: " + ", ".join(f"{n} {name}" for name, n in refused.items()))
    if stats.get("dead_lettered"):
        parts.append(f"{stats['dead_lettered']} dead-lettered (`mas dlq list`)")
    return "; ".join(parts)


class Runtime:
    """Runs one ``mas.yaml``: the server and (unless ``serve_only``) its agents."""

    def __init__(
        self, loaded: LoadedConfig, *, serve_only: bool = False, handle_signals: bool = True
    ) -> None:
        self.loaded = loaded
        self.serve_only = serve_only
        self.handle_signals = handle_signals
        self.server: MasServer | None = None
        self.address: BoundAddress | None = None
        self._stop_requested = trio.Event()
        self.stopped_at_once = False  # a second stop signal cut the graceful stop short

    def request_stop(self) -> None:
        """Begin a graceful stop (safe to call from any agent, any number of times)."""
        self._stop_requested.set()

    def _stop_at_once(self, root: trio.CancelScope) -> None:
        self.stopped_at_once = True
        root.cancel()

    async def run(
        self, *, task_status: trio.TaskStatus[BoundAddress] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run until a stop is requested; readiness once the server and agents are up."""
        config = self.loaded.config
        report = preflight(
            self.loaded, server=True, agents=[] if self.serve_only else config.agents
        )
        for warning in report.warnings:
            log.warning("%s", warning)
        report.raise_errors()
        async with contextlib.AsyncExitStack() as stack:
            tls = _TLSMaterial(config, stack)
            host = AgentHost(
                [] if self.serve_only else config.agents,
                config.agents,
                self.loaded.base_dir,
                tls_for=tls.agent,
                runtime_stop=self.request_stop,
                shutdown_grace=config.limits.shutdown_grace,
            )
            ssl_context = server_ssl_context(tls.ca_path, tls.cert_path, tls.key_path)
            store = await stack.enter_async_context(open_store(config, self.loaded.base_dir))
            server = self.server = MasServer(config, store, ssl_context)
            async with trio.open_nursery() as root:
                if self.handle_signals:
                    # Before the listener: a signal from then on is a graceful stop.
                    await root.start(
                        functools.partial(
                            watch_signals,
                            stop_requested=self._stop_requested,
                            force_stop=functools.partial(self._stop_at_once, root.cancel_scope),
                            reload=self.reload,
                        )
                    )
                await self._start_operations(root, server)
                address = self.address = await root.start(server.serve)
                agent_addr = format_addr(connect_host(address.host), address.port)
                async with trio.open_nursery() as agents:
                    await agents.start(host.run, agent_addr, self._stop_requested)
                    task_status.started(address)
                await server.drain(_SESSION_DRAIN_TIMEOUT)
                stats = server.statistics()
                log.info("stopped: %s", summary(stats))
                log.debug("server statistics: %s", stats)
                root.cancel_scope.cancel()

    async def _start_operations(self, root: trio.Nursery, server: MasServer) -> None:
        """The control socket, and the HTTP endpoint if configured (before the listener:
        a `mas reload` sent once the server says it listens finds the socket)."""
        config = self.loaded.config
        reader = StatusReader(
            server,
            config_path=str(self.loaded.path),
            store_where=store_where(config, self.loaded.base_dir),
        )
        controls = RuntimeControls(self, server, reader)
        await root.start(
            ControlServer(socket_path(self.loaded), controls, server.audit.record).serve
        )
        prometheus = config.gateway.telemetry.prometheus
        if prometheus.port is not None:
            endpoints = Endpoints(reader, server.metrics, lambda: server.address is not None)
            host, port = await root.start(
                HttpServer(endpoints).serve, prometheus.host, prometheus.port
            )
            reader.metrics_address = format_addr(host, port)
            log.info("metrics on http://%s/metrics (/healthz, /readyz)", reader.metrics_address)

    def reload(self) -> None:
        """Re-read the config file and apply its policy; on error keep the running one (SIGHUP)."""
        with contextlib.suppress(MasError):  # apply_reload logged why
            self.apply_reload()

    def apply_reload(self) -> list[str]:
        """Re-read the config file and apply it; the settings that wait for a restart.

        Raises ``ConfigError`` (and keeps the running configuration) when the file is
        not valid now.
        """
        if self.server is None:
            raise ConfigError("the server is still starting: try again in a moment")
        try:
            loaded = load_config(self.loaded.path)
        except MasError as exc:
            log.error("reload failed, keeping the running configuration: %s", exc)
            raise ConfigError(
                f"reload failed, the server keeps its running configuration: {exc}"
            ) from exc
        needs_restart = restart_only_changes(self.server.config, loaded.config)
        self.loaded = loaded
        self.server.reload(loaded.config)
        log.info("configuration reloaded from %s", loaded.path)
        return needs_restart


class RuntimeControls:
    """What the control socket may do to a runtime (``mas.server.control.ControlActions``)."""

    def __init__(self, runtime: Runtime, server: MasServer, reader: StatusReader) -> None:
        self._runtime = runtime
        self._server = server
        self._reader = reader

    async def status(self) -> StatusSnapshot:
        return await self._reader.snapshot()

    async def reload(self) -> ReloadReply:
        needs_restart = self._runtime.apply_reload()
        return ReloadReply(config_path=str(self._runtime.loaded.path), needs_restart=needs_restart)

    async def dlq_replay(
        self, message_ids: list[str] | None, operator: str
    ) -> list[ReplayedMessage]:
        replayed = await self._server.replay_dead_letters(message_ids, operator)
        return [
            ReplayedMessage(message_id=d.message.message_id, target_id=d.message.target_id)
            for d in replayed
        ]

    async def dlq_list(self, request: DlqListRequest) -> ListReply:
        letters = await self._server.list_dead_letters(
            request.agent_id, request.operator, audited=request.start == 0
        )
        return list_page(letters, request.start)
