"""The runtime's nursery tree: store, server, then agents; shutdown in reverse.

::

    Runtime.run
    ├── server            MasServer.serve (listener, sessions, router timers)
    ├── signals           SIGINT/SIGTERM: graceful stop, twice: stop now; SIGHUP: reload
    └── agents            AgentHost.run -> AgentSupervisor (one task per instance, restarts)

A graceful stop (first signal, or an agent calling ``stop_runtime()``) asks
every agent to stop (running handlers finish within ``limits.shutdown_grace``,
then ``on_stop``), waits for them with a deadline, ends the remaining sessions
with ``UNAVAILABLE server_shutting_down``, and cancels the rest.

When the configuration names no TLS files, a throwaway development PKI is made
in a private temporary directory (allowed only on a loopback listen address).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Final

import trio

from .agent import TLSFiles
from .audit.chain import key_from_env
from .audit.keys import chain_key, default_key_path
from .config import AgentSpec, LoadedConfig, MasConfig, load_config, redact_url
from .errors import ConfigError, MasError
from .hosting import AgentHost, watch_signals
from .pki import server_ssl_context, write_dev_pki
from .preflight import dev_pki_refusal, missing_agent_tls, preflight
from .server import BoundAddress, MasServer
from .store import MemoryStore, Store, StoreLimits

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


def store_limits(config: MasConfig) -> StoreLimits:
    """The store bounds a configuration asks for."""
    limits = config.limits
    return StoreLimits(
        max_queue_length=limits.max_queue_length,
        max_message_age=limits.max_message_age,
        max_state_bytes=limits.max_state_bytes,
    )


def build_store(config: MasConfig) -> Store:
    """An in-memory store with the configuration's bounds (tests, throwaway runs).

    Its chain is keyed only by ``gateway.audit.hmac_key_env`` or an explicit
    ``gateway.audit.key_path``: a throwaway store makes no key file of its own.
    """
    audit = config.gateway.audit
    if audit.hmac_key_env is None and audit.key_path is not None:
        return MemoryStore(store_limits(config), audit_key=audit_key(config, Path.cwd()))
    key = key_from_env(audit.hmac_key_env, os.environ)
    return MemoryStore(store_limits(config), audit_key=key)


def store_dir(config: MasConfig, base_dir: Path) -> Path:
    """The directory the store's files live in (mas.yaml's for Redis and memory)."""
    if config.store.backend == "sqlite":
        from .store.sqlite import DEFAULT_FILENAME

        return Path(config.store.path or base_dir / DEFAULT_FILENAME).parent
    return base_dir


def audit_key_path(config: MasConfig, base_dir: Path) -> Path:
    """The audit key file: ``gateway.audit.key_path``, else next to the store."""
    configured = config.gateway.audit.key_path
    return Path(configured) if configured else default_key_path(store_dir(config, base_dir))


def audit_key(config: MasConfig, base_dir: Path, *, create: bool = True) -> bytes | None:
    """The audit chain's HMAC key (see ``mas.audit.keys``); made at first start if ``create``."""
    audit = config.gateway.audit
    return chain_key(
        hmac_key_env=audit.hmac_key_env,
        key_path=audit_key_path(config, base_dir),
        audit_file=audit.file_path,
        env=os.environ,
        create=create,
    )


@contextlib.asynccontextmanager
async def open_store(config: MasConfig, base_dir: Path) -> AsyncIterator[Store]:
    """Open the store ``config.store`` names; it is closed when the block exits.

    The store is the outermost resource of a runtime: it outlives the server and
    the audit writer, and finishes their queued work when it closes.
    """
    key = await trio.to_thread.run_sync(audit_key, config, base_dir)
    limits = store_limits(config)
    backend = config.store.backend
    if backend == "memory":
        yield MemoryStore(limits, audit_key=key)
    elif backend == "sqlite":
        from .store.sqlite import DEFAULT_FILENAME, open_sqlite_store

        path = Path(config.store.path or base_dir / DEFAULT_FILENAME)
        sync = config.store.sync or "full"
        async with open_sqlite_store(
            path,
            limits,
            audit_key=key,
            release_max_attempts=config.limits.max_attempts,
            sync=sync,
        ) as store:
            log.info(
                "store: sqlite %s (sync %s; queues and state persist across runs: delete it "
                "to start afresh)",
                path,
                sync,
            )
            yield store
    else:
        from .store.redis import open_redis_store
        from .store.redis_accept import DEFAULT_TIMEOUT, AcceptWait

        url = config.store.url or config.gateway.redis.url
        redis = config.gateway.redis
        accept = AcceptWait(
            replicas=config.store.accept_replicas or 0,
            fsync=bool(config.store.accept_fsync),
            timeout=config.store.accept_timeout or DEFAULT_TIMEOUT,
        )
        async with open_redis_store(
            url,
            limits,
            audit_key=key,
            release_max_attempts=config.limits.max_attempts,
            socket_timeout=redis.socket_timeout or 5.0,
            require_durable=bool(config.store.require_durable),
            accept=accept,
        ) as redis_store:
            log.info("store: redis %s", redact_url(url))
            yield redis_store


PID_FILE_SUFFIX: Final = ".pid"  # `mas.yaml.pid`: the running server, for `mas reload`


def pid_file_for(config_path: Path) -> Path:
    """Where a server started from ``config_path`` records its process id."""
    return config_path.with_name(config_path.name + PID_FILE_SUFFIX)


@contextlib.contextmanager
def _pid_file(config_path: Path) -> Iterator[None]:
    """Record this process's id next to the config while it serves (for ``mas reload``).

    The file is held under an exclusive ``flock`` for as long as the server runs:
    ``mas reload`` signals only a process whose file is locked, so a file left by a
    crash never makes it signal whatever process now has that id. A second
    server from the same config leaves the first one's file alone.
    """
    path = pid_file_for(config_path)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        log.warning("cannot write %s (`mas reload` will need --pid): %s", path, exc)
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            log.warning(
                "%s is held by another running server; `mas reload` reaches that one "
                "(use --pid %d for this one)",
                path,
                os.getpid(),
            )
            yield
            return
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                path.unlink()  # still under our lock: no reload can read a half-gone file
    finally:
        os.close(fd)


def locked_pid(config_path: Path) -> int:
    """The id of the server serving ``config_path``, as its locked PID file says.

    Raises ``ConfigError`` when there is no PID file, or when no process holds
    its lock (the server that wrote it is gone, and the id may now be anyone's).
    """
    path = pid_file_for(config_path)
    hint = "start it with `mas serve` or `mas run`, or pass --pid"
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise ConfigError(
            f"no running server found for {config_path} ({path}: {exc.strerror}); {hint}"
        ) from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pass  # held: a server is running
        else:
            raise ConfigError(
                f"{path} is stale: no running server holds it (the one that wrote it is "
                f"gone), so nothing was signalled; {hint}"
            )
        text = os.read(fd, 64).decode(errors="replace").strip()
    finally:
        os.close(fd)
    try:
        return int(text)
    except ValueError as exc:
        raise ConfigError(f"{path} holds {text!r}, not a process id; {hint}") from exc


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
                stack.enter_context(_pid_file(self.loaded.path))
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

    def reload(self) -> None:
        """Re-read the config file and apply its policy; on error keep the running one."""
        if self.server is None:
            return
        try:
            loaded = load_config(self.loaded.path)
        except MasError as exc:
            log.error("reload failed, keeping the running configuration: %s", exc)
            return
        self.loaded = loaded
        self.server.reload(loaded.config)
        log.info("configuration reloaded from %s", loaded.path)
